//! The TON contracts' tests (ton/contract) in the real TVM emulator (`@ton/sandbox`), run by
//! the workspace test command: installs the pinned npm packages from the lockfile when they
//! are missing, then runs `npm test`, which also prints the gas and fee table.

use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is Node.js with npm installed?): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn contracts_pass_their_tests_in_the_tvm_emulator() {
    let dir = cocoon_tests::contract::contract_dir_ready();
    let out = run(Command::new("npm").arg("test").current_dir(&dir));
    println!("{out}");
    assert!(out.contains("| operation |"), "no gas table in:\n{out}");
}
