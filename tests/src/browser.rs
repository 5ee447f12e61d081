//! Headless Chromium for the tests that look at a page (the node's dashboard): Debian's
//! `chromium` driven by its `chromedriver` through the W3C WebDriver protocol, a few JSON
//! requests over a plain `TcpStream` (no browser download, no driver crate).
//!
//! [`Browser::start`] fails, never skips, when either program is missing, saying how to
//! install them (`apt-get install -y chromium chromium-driver`, as `.ci/run` does).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

/// Where Debian puts Chromium; `COCOON_CHROMIUM` overrides it.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Chromium's flags: headless, no sandbox (root in containers), no GPU, no scrollbars in
/// screenshots.
pub const CHROMIUM_ARGS: [&str; 5] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];
/// How to install what is missing.
const INSTALL: &str = "install Chromium and its WebDriver: `apt-get install -y chromium \
                       chromium-driver` (as root; .ci/run does it)";

/// A headless Chromium session, with its chromedriver; both end when it is dropped.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session of
    /// `width` × `height` pixels.
    pub fn start(width: u32, height: u32) -> Result<Self> {
        let chromium = std::env::var_os("COCOON_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(CHROMIUM));
        ensure!(
            chromium.is_file(),
            "Chromium is missing ({} not found): {INSTALL}",
            chromium.display()
        );
        let driver_exe = find_program("chromedriver")
            .with_context(|| format!("chromedriver is missing (not on PATH): {INSTALL}"))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(&driver_exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", driver_exe.display()))?;
        let mut browser = Self {
            driver,
            port,
            session: String::new(),
        };
        browser.wait_ready(Duration::from_secs(20))?;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--window-size={width},{height}"));
        let created = browser.call(
            "POST",
            "/session",
            Some(json!({
                "capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": chromium, "args": args},
                }}
            })),
        )?;
        browser.session = created["sessionId"]
            .as_str()
            .with_context(|| format!("no session id in {created}"))?
            .to_string();
        Ok(browser)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(status) = self.call("GET", "/status", None) {
                if status["ready"] == true {
                    return Ok(());
                }
            }
            if let Some(exit) = self.driver.try_wait()? {
                bail!("chromedriver exited at start ({exit})");
            }
            ensure!(
                Instant::now() < deadline,
                "chromedriver not ready in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One WebDriver command: its `value`, or the error WebDriver reports.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, text) = http(self.port, method, path, body.as_ref())?;
        let reply: Value = serde_json::from_slice(&text)
            .with_context(|| format!("{method} {path}: not JSON (HTTP {status})"))?;
        let value = reply.get("value").cloned().unwrap_or(Value::Null);
        if status != 200 {
            bail!(
                "{method} {path}: HTTP {status}: {} {}",
                value["error"],
                value["message"]
            );
        }
        Ok(value)
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn open(&self, url: &str) -> Result<()> {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        )?;
        Ok(())
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub fn eval(&self, script: &str) -> Result<Value> {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Resizes the window.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            "POST",
            &self.session_path("/window/rect"),
            Some(json!({ "width": width, "height": height })),
        )?;
        Ok(())
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        let value = self.call("GET", &self.session_path("/screenshot"), None)?;
        let b64 = value.as_str().context("a screenshot is a base64 string")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
    }

    /// Writes a PNG of the viewport to `path` (creating its folder).
    pub fn save_screenshot(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.screenshot()?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &self.session_path(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One HTTP/1.1 exchange with chromedriver on loopback: the status and the body.
/// (chromedriver keeps the connection open whatever the request says, so the body is read
/// by its length, not to the end of the stream.)
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    // Opening a session starts Chromium; a navigation waits for the page's load.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut read_more = |raw: &mut Vec<u8>| -> Result<bool> {
        let n = stream.read(&mut buf)?;
        raw.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    };
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        ensure!(
            read_more(&mut raw)?,
            "the connection closed before the response head"
        );
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| Some(l.split_once(':')?).filter(|(k, _)| k.trim() == name))
            .map(|(_, v)| v.trim().to_string())
    };
    let start = split + 4;
    if let Some(length) = header("content-length") {
        let length: usize = length.parse().context("a content length")?;
        while raw.len() < start + length {
            ensure!(read_more(&mut raw)?, "the connection closed mid-body");
        }
        return Ok((status, raw[start..start + length].to_vec()));
    }
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while !raw[start..].ends_with(b"0\r\n\r\n") {
            ensure!(read_more(&mut raw)?, "the connection closed mid-body");
        }
        return Ok((status, dechunk(&raw[start..])?));
    }
    while read_more(&mut raw)? {}
    Ok((status, raw[start..].to_vec()))
}

/// The body of a chunked transfer.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).context("a chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(rest.len() >= size + 2, "a truncated chunk");
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert!(dechunk(b"9\r\nshort\r\n").is_err());
    }
}
