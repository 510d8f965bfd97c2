//! Headless Chromium through chromedriver, for the console's browser tests.
//!
//! [`Browser`] is blocking like the rest of the harness: it owns a small
//! tokio runtime for the WebDriver client. Screenshots go to
//! `target/<profile>/console-screenshots/` so they outlive the test as
//! artifacts to look at.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::{Proc, bin_dir, free_port, wait_for};

/// WebDriver key codes.
pub const TAB: &str = "\u{e004}";
pub const ENTER: &str = "\u{e007}";

/// How the browser presents itself.
#[derive(Debug, Clone, Copy)]
pub struct Look {
    pub width: u32,
    pub height: u32,
    /// `prefers-color-scheme: dark`.
    pub dark: bool,
}

impl Look {
    pub const DESKTOP: Look = Look {
        width: 1280,
        height: 900,
        dark: false,
    };
    pub const DESKTOP_DARK: Look = Look {
        width: 1280,
        height: 900,
        dark: true,
    };
    pub const PHONE_DARK: Look = Look {
        width: 390,
        height: 844,
        dark: true,
    };
}

pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    _driver: Proc,
    base: String,
}

/// Where screenshots are kept.
pub fn screenshot_dir() -> PathBuf {
    bin_dir().join("console-screenshots")
}

impl Browser {
    /// Start chromedriver and a headless Chromium session on `base` (e.g. `http://127.0.0.1:PORT`).
    pub fn start(work: &Path, base: &str, look: Look) -> Result<Browser> {
        let port = free_port();
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"));
        let driver = Proc::spawn("chromedriver", cmd, work)
            .context("chromedriver (Debian package chromium-driver)")?;
        let url = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })?;
        let profile = work.join(format!("chromium-profile-{port}"));
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={},{}", look.width, look.height),
        ];
        if look.dark {
            args.push("--force-dark-mode".into());
        }
        let caps = json!({
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = runtime.block_on(async {
            ClientBuilder::rustls()?
                .capabilities(caps.as_object().expect("an object").clone())
                .connect(&url)
                .await
                .context("WebDriver session")
        })?;
        let browser = Browser {
            runtime,
            client: Some(client),
            _driver: driver,
            base: base.trim_end_matches('/').to_owned(),
        };
        browser.resize(look.width, look.height)?;
        Ok(browser)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("open until dropped")
    }

    async fn find(&self, css: &str) -> Result<fantoccini::elements::Element> {
        self.client()
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("find {css}"))
    }

    /// Set the viewport to exactly `width` × `height` CSS pixels.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        // The window has chrome around the viewport: size it, then correct.
        let c = self.client();
        self.runtime.block_on(c.set_window_size(width, height))?;
        let inner = self.js("return [window.innerWidth, window.innerHeight];", vec![])?;
        let (iw, ih) = (
            inner[0].as_u64().unwrap_or(0),
            inner[1].as_u64().unwrap_or(0),
        );
        if (iw, ih) != (u64::from(width), u64::from(height)) {
            let w = width + (width as i64 - iw as i64).max(0) as u32;
            let h = height + (height as i64 - ih as i64).max(0) as u32;
            self.runtime.block_on(c.set_window_size(w, h))?;
        }
        Ok(())
    }

    pub fn goto(&self, path: &str) -> Result<()> {
        let url = format!("{}{path}", self.base);
        self.runtime
            .block_on(self.client().goto(&url))
            .with_context(|| format!("goto {url}"))
    }

    /// The current URL's path.
    pub fn path(&self) -> Result<String> {
        Ok(self
            .runtime
            .block_on(self.client().current_url())?
            .path()
            .to_owned())
    }

    pub fn exists(&self, css: &str) -> Result<bool> {
        Ok(!self
            .runtime
            .block_on(self.client().find_all(Locator::Css(css)))?
            .is_empty())
    }

    pub fn click(&self, css: &str) -> Result<()> {
        self.runtime.block_on(async {
            let e = self.find(css).await?;
            e.click().await.with_context(|| format!("click {css}"))
        })
    }

    /// Type `text` into the field `css` (cleared first).
    pub fn fill(&self, css: &str, text: &str) -> Result<()> {
        self.runtime.block_on(async {
            let e = self.find(css).await?;
            e.clear().await?;
            e.send_keys(text)
                .await
                .with_context(|| format!("type into {css}"))
        })
    }

    pub fn text(&self, css: &str) -> Result<String> {
        self.runtime.block_on(async {
            let e = self.find(css).await?;
            Ok(e.text().await?)
        })
    }

    pub fn inner_html(&self, css: &str) -> Result<String> {
        self.runtime.block_on(async {
            let e = self.find(css).await?;
            Ok(e.html(true).await?)
        })
    }

    /// Run `script` (a function body; `arguments[i]` are `args`) in the page.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        Ok(self.runtime.block_on(self.client().execute(script, args))?)
    }

    /// Run an asynchronous script: it calls `arguments[arguments.length - 1]` with its result.
    pub fn js_async(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        Ok(self
            .runtime
            .block_on(self.client().execute_async(script, args))?)
    }

    /// Press a key (a WebDriver key code, e.g. `\u{e004}` Tab, `\u{e007}`
    /// Enter) in whatever has the focus, as a keyboard does: WebDriver key
    /// actions, not keys sent to an element, so a part of the page htmx
    /// replaces meanwhile cannot turn the press into a stale-element error.
    pub fn press(&self, key: &str) -> Result<()> {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let mut keys = KeyActions::new("keyboard".into());
        for value in key.chars() {
            keys = keys
                .then(KeyAction::Down { value })
                .then(KeyAction::Up { value });
        }
        self.runtime.block_on(async {
            self.client().perform_actions(keys).await?;
            Ok(())
        })
    }

    /// Tab through the page until the focus is on `css` (at most `limit`
    /// presses); how many it took.
    pub fn tab_to(&self, css: &str, limit: usize) -> Result<usize> {
        for presses in 1..=limit {
            self.press(TAB)?;
            let there = self.js(
                "return document.activeElement.matches(arguments[0]);",
                vec![serde_json::json!(css)],
            )?;
            if there == serde_json::json!(true) {
                return Ok(presses);
            }
        }
        bail!("{css} was not reached with {limit} presses of Tab")
    }

    /// Wait until `css` matches something in the page.
    pub fn wait_css(&self, css: &str, limit: Duration) -> Result<()> {
        wait_for(css, limit, || {
            self.exists(css).ok().filter(|e| *e).map(|_| ())
        })
    }

    /// Save a PNG of the viewport as `name.png` in [`screenshot_dir`]; its path.
    /// Sign in as `name` and wait for the fleet page; on failure the page is
    /// kept as a screenshot and its text goes into the error.
    pub fn log_in(&self, name: &str, password: &str) -> Result<()> {
        self.goto("/login")?;
        self.fill("input[name=name]", name)?;
        self.fill("input[name=password]", password)?;
        self.click("form button[type=submit]")?;
        wait_for(
            "the fleet page after login",
            Duration::from_secs(20),
            || (self.path().ok()? == "/" && self.exists("#nodes").ok()?).then_some(()),
        )
        .map_err(|e| {
            let _ = self.screenshot(&format!("failed-login-{name}"));
            let page = self.text("body").unwrap_or_default();
            anyhow::anyhow!("{e}; at {:?}: {page}", self.path())
        })
    }

    pub fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self.runtime.block_on(self.client().screenshot())?;
        if !png.starts_with(b"\x89PNG") {
            bail!("the screenshot of {name} is not a PNG");
        }
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Whether anything in the page is wider than the viewport (a phone
    /// would have to scroll sideways).
    pub fn overflows_horizontally(&self) -> Result<bool> {
        let v = self.js(
            "return document.documentElement.scrollWidth > window.innerWidth;",
            vec![],
        )?;
        Ok(v.as_bool().unwrap_or(true))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
    }
}
