//! Templates and assets, all compiled into the binary.
//!
//! Templates are minijinja with auto-escaping on (every `.html` name), so a label or an e-mail
//! address is always text, never markup. The provider's colours become a stylesheet served from
//! the portal itself, so the Content-Security-Policy needs no inline style.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use minijinja::{context, Environment, Value};

use super::error::PortalError;
use super::session::Visit;
use super::PortalState;
use crate::config::PortalSettings;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("sign_in.html", include_str!("templates/sign_in.html")),
    ("sent.html", include_str!("templates/sent.html")),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("sign_up.html", include_str!("templates/sign_up.html")),
    ("keys.html", include_str!("templates/keys.html")),
    ("key_rows.html", include_str!("templates/key_rows.html")),
    ("rotate.html", include_str!("templates/rotate.html")),
    ("revoke.html", include_str!("templates/revoke.html")),
    ("action.html", include_str!("templates/action.html")),
    ("shown.html", include_str!("templates/shown.html")),
    ("feed.html", include_str!("templates/feed.html")),
    (
        "feed_rotate.html",
        include_str!("templates/feed_rotate.html"),
    ),
    ("account.html", include_str!("templates/account.html")),
    ("usage.html", include_str!("templates/usage.html")),
    ("bookmakers.html", include_str!("templates/bookmakers.html")),
    ("bots.html", include_str!("templates/bots.html")),
];

const PORTAL_CSS: &str = include_str!("assets/portal.css");
const COPY_JS: &str = include_str!("assets/copy.js");

/// The compiled templates and the provider's look.
#[derive(Debug)]
pub(crate) struct Pages {
    env: Environment<'static>,
    theme_css: String,
    provider: Value,
}

impl Pages {
    pub(crate) fn new(settings: &PortalSettings) -> Result<Pages, PortalError> {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)?;
        }
        let c = &settings.colors;
        let theme_css = format!(
            ":root {{ --primary: {}; --background: {}; --text: {}; }}\n",
            c.primary, c.background, c.text
        );
        let provider = Value::from_serialize(serde_json::json!({
            "name": settings.name,
            "logo": settings.logo,
            "sign_up": settings.sign_up,
            "bookmaker_selection": settings.bookmaker_selection,
            "child_bots": settings.child_bots,
        }));
        Ok(Pages {
            env,
            theme_css,
            provider,
        })
    }

    /// Renders `name` with `ctx`, the provider and the visitor's CSRF token.
    ///
    /// # Errors
    /// [`PortalError::Template`].
    pub(crate) fn render(
        &self,
        name: &str,
        visit: &Visit,
        signed_in: Option<&str>,
        ctx: Value,
    ) -> Result<String, PortalError> {
        let template = self.env.get_template(name)?;
        Ok(template.render(context! {
            provider => self.provider.clone(),
            csrf => visit.csrf.as_str(),
            user => signed_in,
            ..ctx
        })?)
    }
}

impl Pages {
    /// Renders the fragment `name` with `ctx` alone: markup shared by every visitor (no CSRF
    /// token, no user), kept and inserted into pages as it is (`keys::Listing`).
    ///
    /// # Errors
    /// [`PortalError::Template`].
    pub(crate) fn render_fragment(&self, name: &str, ctx: Value) -> Result<Value, PortalError> {
        let html = self.env.get_template(name)?.render(ctx)?;
        Ok(Value::from_safe_string(html))
    }
}

/// A rendered page answered with `status`, the CSRF cookie set when new.
///
/// # Errors
/// [`PortalError::Template`].
pub(crate) fn page(
    state: &PortalState,
    visit: &Visit,
    signed_in: Option<&str>,
    status: StatusCode,
    name: &str,
    ctx: Value,
) -> Result<Response, PortalError> {
    // The Messaging feed entry needs `[amqp]` on this node, which the gateway knows.
    let messaging_feed = state.gateway().amqp.get().is_some();
    let html = state.pages.render(
        name,
        visit,
        signed_in,
        context! { messaging_feed => messaging_feed, ..ctx },
    )?;
    Ok(visit.finish(state, (status, Html(html)).into_response()))
}

/// `GET /assets/{name}`: the embedded stylesheets and script.
pub(crate) async fn asset(
    State(state): State<PortalState>,
    Path(name): Path<String>,
) -> Result<Response, PortalError> {
    let (body, kind): (String, &str) = match name.as_str() {
        "portal.css" => (PORTAL_CSS.to_owned(), "text/css; charset=utf-8"),
        "theme.css" => (state.pages.theme_css.clone(), "text/css; charset=utf-8"),
        "copy.js" => (COPY_JS.to_owned(), "text/javascript; charset=utf-8"),
        _ => return Err(PortalError::NotFound),
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    Ok(resp)
}

#[cfg(test)]
impl Pages {
    /// The pages of a portal named `name`, for unit tests.
    pub(crate) fn for_tests(name: &str) -> Pages {
        let config = crate::config::load(
            &format!("[portal]\nlisten = \"127.0.0.1:0\"\nname = {name:?}\n"),
            "t.toml",
            &crate::config::Overrides {
                tooling: true,
                ..crate::config::Overrides::default()
            },
        )
        .unwrap();
        Pages::new(config.portal.as_ref().unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_escapes() {
        let pages = Pages::for_tests("Odds<Stream>");
        let visit = Visit::from_headers_for_tests();
        let html = pages
            .render("sign_in.html", &visit, None, context! {})
            .unwrap();
        assert!(html.contains("Odds&lt;Stream&gt;"), "{html}");
        assert!(!html.contains("Odds<Stream>"));
        assert!(html.contains(&visit.csrf));
        let key = context! { id => "key_0123456789abcdef", hint => "kg_ab…yz", label => "prod" };
        let feed = context! { user => "op-acme", state => "active", live => true };
        let ctx = context! { key => key, feed => feed, plan => context! { name => "free" }, limits => context! {} };
        for (name, _) in TEMPLATES {
            pages
                .render(name, &visit, Some("ann@acme.test"), ctx.clone())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
