//! `GET /`: the pool's live dashboard, one page whose script and style are
//! compiled into the binary (`dashboard/`), so that it works with no
//! network, fetches nothing from elsewhere, and cannot drift from the server
//! it comes with. The page reads `/cluster/memory` and `/cluster/metrics`
//! once, then lives on `/events`; its buttons are the token-guarded POSTs.
//!
//! Its Content-Security-Policy lets it load nothing but these files and talk
//! to nothing but this server, and no other site may frame it (the buttons
//! change the pool).

use axum::{
    http::header,
    response::{IntoResponse, Response},
};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// The paths of the page and its files: they hold no data of the pool, so
/// they are served without the token even when reads take it.
pub const PATHS: [&str; 3] = ["/", "/dashboard.js", "/dashboard.css"];

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_small_and_loads_only_its_own_files() {
        let size = PAGE.len() + SCRIPT.len() + STYLE.len();
        assert!(size < 150 * 1024, "{size} bytes");
        for text in [PAGE, SCRIPT, STYLE] {
            for outside in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(outside), "{outside} in an asset");
            }
        }
        assert!(PAGE.contains(r#"<script src="/dashboard.js""#));
        assert!(PAGE.contains(r#"<link rel="stylesheet" href="/dashboard.css">"#));
    }
}
