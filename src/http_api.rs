//! The HTTP routes, independent of Spin: a request in, a response out.

use serde_json::json;

use crate::config::Config;
use crate::ports::Env;

/// An incoming request, reduced to what the routes need.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    fn json(status: u16, value: serde_json::Value) -> Self {
        let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
        body.push(b'\n');
        ApiResponse {
            status,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body,
        }
    }

    fn error(status: u16, message: &str) -> Self {
        Self::json(status, json!({ "error": message }))
    }
}

/// Routes a request. Unknown paths get 404, known paths with the wrong method 405.
pub fn handle(env: &Env, req: &ApiRequest) -> ApiResponse {
    let allowed: &[&str] = match req.path.as_str() {
        "/healthz" => &["GET", "HEAD"],
        _ => return ApiResponse::error(404, "no such route"),
    };
    if !allowed.contains(&req.method.as_str()) {
        let mut resp = ApiResponse::error(405, "method not allowed");
        resp.headers.push(("allow", allowed.join(", ")));
        return resp;
    }
    healthz(env)
}

/// Liveness plus whether the configuration is valid. Names the wrong settings and why, never a
/// value. 503 when the configuration is invalid, so a platform health check notices.
fn healthz(env: &Env) -> ApiResponse {
    match Config::load(env.vars) {
        Ok(_) => ApiResponse::json(200, json!({ "status": "ok", "configuration_valid": true })),
        Err(e) => ApiResponse::json(
            503,
            json!({
                "status": "misconfigured",
                "configuration_valid": false,
                "invalid_settings": e.settings(),
                "problems": e.problems.iter().map(|p| json!({"setting": p.setting, "problem": p.message})).collect::<Vec<_>>(),
            }),
        ),
    }
}
