//! The API contract, checked by a property-based fuzzer: `schemathesis` (from
//! PyPI, installed by `scripts/test` under `.tools/schemathesis`) runs over
//! each listener's `/openapi.json` against a live stack with real credentials,
//! and fails on any 5xx and on any status the document does not list.

use std::path::PathBuf;

use crate::helpers::spawn_app;

fn schemathesis() -> PathBuf {
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/schemathesis/bin/st");
    std::env::var_os("TENANTRY_SCHEMATHESIS")
        .map(PathBuf::from)
        .or_else(|| local.exists().then_some(local))
        .expect("schemathesis not found: run scripts/test, which installs it under .tools/schemathesis")
}

/// Runs `st run` over `base`'s OpenAPI document; its output if it failed.
/// One worker: hypothesis describes its strategies with `ast`, which is not
/// thread-safe on Python 3.11 ("AST constructor recursion depth mismatch").
async fn fuzz(base: &str, token: &str, examples: u32) -> Result<String, String> {
    let out = tokio::process::Command::new(schemathesis())
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--checks", "not_a_server_error,status_code_conformance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &examples.to_string(), "--seed", "20261129", "--workers", "1"])
        .args(["--request-timeout", "30", "--no-shrink"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .expect("start schemathesis");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(text) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_listeners_answer_only_documented_statuses_and_never_5xx() {
    let app = spawn_app().await;
    let t = app.create_tenant("fuzz-acme", "shared").await;
    app.seed(&t.key, "F-1").await;

    let served = fuzz(&app.app, &t.key, 25).await.unwrap_or_else(|out| panic!("app API contract broken:\n{out}"));
    assert!(served.contains("passed"), "the app run tested something:\n{served}");
    let served =
        fuzz(&app.admin, &app.token, 25).await.unwrap_or_else(|out| panic!("admin API contract broken:\n{out}"));
    assert!(served.contains("passed"), "the admin run tested something:\n{served}");
}
