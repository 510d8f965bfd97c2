//! Server-rendered HTML shared by the fleet console and the appliance status page.
//!
//! - [`assets`]: static files (htmx, our CSS) compiled into the binary and served
//!   under content-hashed URLs with immutable caching. Nothing is fetched from a
//!   CDN: appliances and consoles often run offline.
//! - [`layout`] and [`components`]: maud markup. maud escapes every interpolated
//!   value; this crate contains no `PreEscaped` of runtime data.

pub mod assets;
pub mod components;
pub mod layout;

pub use maud::{Markup, html};
