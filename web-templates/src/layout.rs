//! The page shell: head, header bar, main area.

use maud::{DOCTYPE, Markup, html};

use crate::assets::{HTMX, SCRIPT, STYLESHEET};

/// What the header shows about where the user is.
#[derive(Debug, Clone, Copy)]
pub struct Chrome<'a> {
    /// Product area, e.g. "Fleet console" or "Appliance".
    pub area: &'a str,
    /// Shown at the right of the header (version, node id).
    pub detail: &'a str,
}

/// A full HTML page. `title` and everything in `body` are escaped by maud.
pub fn page(title: &str, chrome: Chrome<'_>, body: Markup) -> Markup {
    page_with_head(title, chrome, html! {}, body)
}

/// A full HTML page with extra elements in `<head>` (e.g. a no-script refresh).
pub fn page_with_head(title: &str, chrome: Chrome<'_>, head_extra: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Rakkr" }
                // htmx would otherwise inject an inline <style>, which our CSP forbids.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false}"#;
                link rel="stylesheet" href=(STYLESHEET.url);
                script src=(HTMX.url) defer {}
                script src=(SCRIPT.url) defer {}
                (head_extra)
            }
            body {
                header.topbar {
                    a.brand href="/" { "Rakkr" }
                    span.area { (chrome.area) }
                    span.detail { (chrome.detail) }
                }
                main { (body) }
            }
        }
    }
}
