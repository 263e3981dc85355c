//! The fleet dashboard at `/`: plain HTML, CSS and JavaScript embedded in the binary (no build
//! step), reading the same REST API as everyone else with a reader (or admin) token.
//!
//! How the browser gets the token: a login form stores it in `sessionStorage` (gone when the tab
//! closes) and `fetch` sends it as `Authorization: Bearer`. No cookie is set, so there is no
//! CSRF surface. A link may carry it in the URL *fragment* (`/#token=...`), which browsers never
//! send to a server; the script moves it into `sessionStorage` and removes it from the address
//! bar at once. A query string (`?token=`) would land in access logs and is not supported.
//!
//! The pages themselves are public (they contain no data); every datum comes from the API under
//! the token. Data is inserted with `textContent` only, never as HTML, and a strict
//! Content-Security-Policy forbids inline scripts, so a label or error message from a device
//! cannot run script in an operator's browser.

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Scripts and styles only from this origin, API calls only to it, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The paths the dashboard serves (also listed in the OpenAPI document).
pub const DASHBOARD_PATHS: [&str; 3] = ["/", "/dashboard/app.js", "/dashboard/style.css"];

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
            (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            // Small and versioned with the binary; a restart with a new build must show at once.
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// The dashboard's routes, merged into the manager's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(DASHBOARD_PATHS[0], get(index))
        .route(DASHBOARD_PATHS[1], get(app_js))
        .route(DASHBOARD_PATHS[2], get(style_css))
}

#[cfg(test)]
mod tests;
