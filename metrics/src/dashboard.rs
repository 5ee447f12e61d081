//! The node's dashboard, on the metrics listener beside `/metrics`.
//!
//! - `GET /`: the page (HTML), with `GET /dashboard.js` and `GET /dashboard.css`; all three
//!   are compiled into the binary (`include_str!` of `metrics/assets/`) and the page loads
//!   nothing else: its Content-Security-Policy allows only this origin. The script fetches
//!   `/api/status` every 2 s and draws its charts as inline SVG itself.
//! - `GET /api/status[?since=MS][&last=N]`: the [`Report`](crate::status::Report) of the
//!   node's [`Board`] as JSON: the status now and the history points after `since` (unix
//!   ms), at most the `last` N (`cocoon status` asks for `last=0`). A value that is not a
//!   number is a 400 with a JSON body.
//!
//! Any other path is 404 and any other method 405 (axum's router); the HTTP server the
//! binary runs answers malformed requests with 400s.

use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::status::{Board, HistoryQuery};

/// The page.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// Its script: fetches the status, fills the page, draws the charts.
pub const SCRIPT: &str = include_str!("../assets/dashboard.js");
/// Its style sheet.
pub const STYLE: &str = include_str!("../assets/dashboard.css");

/// The page may load from its own origin only (and nothing inline but `data:` images).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The status path, relative to the listener's root.
pub const STATUS_PATH: &str = "/api/status";

/// `GET /`, its assets and `GET /api/status` from `board`; merge it with
/// [`crate::router`] to serve both on one listener.
pub fn router(board: Board) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            STATUS_PATH,
            get(move |uri: Uri| {
                let board = board.clone();
                async move { status(&board, uri.query()) }
            }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn status(board: &Board, query: Option<&str>) -> Response {
    let (code, body) = match HistoryQuery::parse(query) {
        Ok(query) => match serde_json::to_string(&board.report(&query)) {
            Ok(json) => (StatusCode::OK, json),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                error_json(&e.to_string()),
            ),
        },
        Err(e) => (StatusCode::BAD_REQUEST, error_json(&e.to_string())),
    };
    let mut response = (code, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_json(message: &str) -> String {
    serde_json::json!({ "error": { "message": message } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{HistoryConfig, Report, Snapshot};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(app: &Router, method: &str, uri: &str) -> (StatusCode, String, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn the_page_its_assets_and_the_status_are_served_and_the_rest_refused() {
        let board = Board::new(HistoryConfig::default(), 0);
        let app = router(board.clone());
        let (code, kind, page) = call(&app, "GET", "/").await;
        assert_eq!(
            (code, kind.as_str()),
            (StatusCode::OK, "text/html; charset=utf-8")
        );
        assert!(page.contains("dashboard.js") && page.contains("dashboard.css"));
        let (code, kind, _) = call(&app, "GET", "/dashboard.js").await;
        assert_eq!(
            (code, kind.as_str()),
            (StatusCode::OK, "text/javascript; charset=utf-8")
        );
        let (code, kind, _) = call(&app, "GET", "/dashboard.css").await;
        assert_eq!(
            (code, kind.as_str()),
            (StatusCode::OK, "text/css; charset=utf-8")
        );

        // Before the first snapshot: no status yet, an empty history.
        let (code, kind, body) = call(&app, "GET", "/api/status").await;
        assert_eq!((code, kind.as_str()), (StatusCode::OK, "application/json"));
        let report: Report = serde_json::from_str(&body).unwrap();
        assert_eq!(report.status, None);
        let snapshot = Snapshot {
            peer_id: "12D3Koo".into(),
            totals: Default::default(),
            ttft: crate::status::Buckets::new(crate::TTFT_BUCKETS),
            engine: Default::default(),
            channels: Default::default(),
            models: vec![],
            peers: Default::default(),
            attestation: None,
        };
        board.update(1_000, snapshot.clone());
        board.update(20_000, snapshot);
        let (_, _, body) = call(&app, "GET", "/api/status?since=1000").await;
        let report: Report = serde_json::from_str(&body).unwrap();
        assert_eq!(report.status.unwrap().peer_id, "12D3Koo");
        assert_eq!(report.history.points.len(), 1);
        let (_, _, body) = call(&app, "GET", "/api/status?last=0").await;
        let report: Report = serde_json::from_str(&body).unwrap();
        assert!(report.history.points.is_empty());

        let (code, kind, body) = call(&app, "GET", "/api/status?since=yesterday").await;
        assert_eq!(
            (code, kind.as_str()),
            (StatusCode::BAD_REQUEST, "application/json")
        );
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("since"));
        assert_eq!(call(&app, "GET", "/nope").await.0, StatusCode::NOT_FOUND);
        assert_eq!(call(&app, "GET", "/api").await.0, StatusCode::NOT_FOUND);
        for (method, uri) in [
            ("POST", "/"),
            ("DELETE", "/api/status"),
            ("PUT", "/dashboard.js"),
        ] {
            assert_eq!(
                call(&app, method, uri).await.0,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {uri}"
            );
        }
    }

    #[tokio::test]
    async fn merged_with_the_metrics_router_both_answer() {
        let mut registry = crate::MetricsRegistry::new();
        let _node = registry.node();
        let app =
            crate::router(registry.finish()).merge(router(Board::new(HistoryConfig::default(), 0)));
        assert_eq!(call(&app, "GET", "/metrics").await.0, StatusCode::OK);
        assert_eq!(call(&app, "GET", "/").await.0, StatusCode::OK);
        assert_eq!(call(&app, "GET", "/api/status").await.0, StatusCode::OK);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // The only URL with a scheme in the assets is the SVG namespace, which is a name.
        for (name, text) in [("html", INDEX_HTML), ("js", SCRIPT), ("css", STYLE)] {
            let others = text
                .replace("http://www.w3.org/2000/svg", "")
                .matches("://")
                .count();
            assert_eq!(others, 0, "{name} names another origin");
            assert!(!text.contains("//cdn"), "{name}");
        }
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none'"));
    }
}
