//! The mail and page templates (`templates/`, compiled in), rendered with minijinja. HTML
//! templates (`.html`) escape every value; text templates (`.txt`) take values as they are.

use std::sync::LazyLock;

use minijinja::Environment;
use serde::Serialize;

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // The mail's text ends as its template does.
    env.set_keep_trailing_newline(true);
    for (name, source) in [
        (
            "email_verification.txt",
            include_str!("../templates/email_verification.txt"),
        ),
        (
            "email_verification.html",
            include_str!("../templates/email_verification.html"),
        ),
        (
            "verify_email_page.html",
            include_str!("../templates/verify_email_page.html"),
        ),
        (
            "dashboard.html",
            include_str!("../templates/dashboard.html"),
        ),
        (
            "admin_form.html",
            include_str!("../templates/admin_form.html"),
        ),
    ] {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("template {name}: {e}"));
    }
    env
});

/// Renders the template `name` (one of `templates/`) with `context`. The templates are part
/// of the binary and checked by the tests, so a failure is a bug: it is reported as an error
/// naming the template, not a panic in a request.
pub fn render(name: &str, context: impl Serialize) -> Result<String, minijinja::Error> {
    TEMPLATES.get_template(name)?.render(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_values_and_text_does_not() {
        let html = render(
            "verify_email_page.html",
            serde_json::json!({"title": "<b>t</b>", "message": "a & b"}),
        )
        .unwrap();
        // minijinja escapes `/` too (harmless in text and attributes).
        assert!(
            html.contains("&lt;b&gt;t&lt;&#x2f;b&gt;") && html.contains("a &amp; b"),
            "{html}"
        );
        let text = render(
            "email_verification.txt",
            serde_json::json!({"name": "<Ann>", "email": "a@b", "code": "1", "link": "l", "valid_for": "1h"}),
        )
        .unwrap();
        assert!(text.contains("Hello <Ann>,"), "{text}");
    }
}
