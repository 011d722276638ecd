//! The pieces every page is made of, as maud templates: the page frame and its
//! navigation, tables, status words, links, notices and forms (which always
//! carry the session's CSRF field). maud escapes every value it is given; only
//! `PreEscaped` is written as is, so an unescaped value is something a reader
//! sees in the code, not something a template forgets.

use maud::{DOCTYPE, PreEscaped, Render};
pub use maud::{Markup, html};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d2330}\
header{background:#1d2330;color:#fff;padding:.6em 1em;display:flex;gap:1.2em;align-items:center;flex-wrap:wrap}\
header a{color:#cfe0ff;text-decoration:none}header .who{margin-left:auto;font-size:.9em}\
main{padding:1em 1.5em}table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #d5d9e0;padding:.3em .6em;text-align:left;font-size:.92em}th{background:#f1f3f6}\
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #d5d9e0;border-radius:6px;padding:.8em 1.2em;min-width:9em}\
.card .n{font-size:2em;font-weight:600}.s-applied,.s-fixed,.s-nothing-to-apply{color:#176c2c}\
.s-pending,.s-unknown{color:#8a6100}.s-needs-restart{color:#9a3c00}.s-apply-failed,.s-check-failed,.s-halted{color:#b00020;font-weight:600}\
code{font-size:.85em}form.act{border:1px solid #d5d9e0;border-radius:6px;padding:.6em 1em;margin:.5em 0 1.2em;max-width:52em}\
form.act label{display:block;margin:.35em 0}form.inline{display:inline;margin-right:.4em}\
.error{background:#fde8eb;border:1px solid #b00020;color:#b00020;padding:.5em 1em;border-radius:4px}\
.notice{background:#e6f4ea;border:1px solid #176c2c;padding:.5em 1em;border-radius:4px}.why{font-style:italic}\
.card a{color:inherit;text-decoration:none}.s-not-covered{color:#5b6270}.s-paused,.s-cancelled{color:#5b6270}.bar{background:#e4e7ec;width:12em;height:.8em;display:inline-block}.bar i{background:#2f7d4a;height:100%;display:block}";

const NAV: [(&str, &str); 9] = [
    ("/ui/", "Overview"),
    ("/ui/machines", "Machines"),
    ("/ui/catalog", "Catalog"),
    ("/ui/deployments", "Deployments"),
    ("/ui/tiers", "Tiers"),
    ("/ui/compliance", "Compliance"),
    ("/ui/keys", "Keys"),
    ("/ui/billing", "Billing"),
    ("/ui/audit", "Audit log"),
];

/// A whole page: the frame, the navigation for a signed-in `who` (user, role),
/// the title as heading, and `body`.
pub fn page(title: &str, who: Option<(&str, &str)>, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · hotpatch" }
                meta name="viewport" content="width=device-width";
                // A constant of this file, not a value.
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "hotpatch" }
                    @if let Some((user, role)) = who {
                        @for (href, text) in NAV { a href=(href) { (text) } }
                        span.who { (user) " (" (role) ") · " a href="/ui/logout" { "sign out" } }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
    .into_string()
}

/// A page's body, built in order: headings, paragraphs, tables, forms.
#[derive(Default)]
pub struct Page {
    parts: Vec<Markup>,
}

impl Page {
    pub fn new() -> Page {
        Page::default()
    }

    pub fn markup(&mut self, m: Markup) -> &mut Self {
        self.parts.push(m);
        self
    }

    pub fn h(&mut self, level: u8, text: &str) -> &mut Self {
        self.markup(match level {
            1 => html! { h1 { (text) } },
            2 => html! { h2 { (text) } },
            _ => html! { h3 { (text) } },
        })
    }

    pub fn p(&mut self, text: &str) -> &mut Self {
        self.markup(html! { p { (text) } })
    }

    pub fn table(&mut self, id: &str, headers: &[&str], rows: &[Vec<Markup>]) -> &mut Self {
        self.markup(table(id, headers, rows))
    }

    /// The whole page for a signed-in `who` (user, role), or for nobody.
    pub fn render(&self, title: &str, who: Option<(&str, &str)>) -> String {
        page(title, who, html! { @for p in &self.parts { (p) } })
    }
}

/// Any displayable value as escaped text (a table cell, a number).
pub fn text(value: impl Render) -> Markup {
    html! { (value) }
}

/// A table with a header row; a table without rows says "none".
pub fn table(id: &str, headers: &[&str], rows: &[Vec<Markup>]) -> Markup {
    html! {
        table id=(id) {
            thead { tr { @for h in headers { th { (h) } } } }
            tbody {
                @for r in rows { tr { @for c in r { td { (c) } } } }
                @if rows.is_empty() { tr { td colspan=(headers.len()) { "none" } } }
            }
        }
    }
}

/// A status word with its colour class.
pub fn status(word: &str) -> Markup {
    html! { span class={ "s-" (word) } { (word) } }
}

pub fn link(href: &str, text: &str) -> Markup {
    html! { a href=(href) { (text) } }
}

/// A message box above a form: what went wrong (`error`) or what was done (`notice`).
pub fn notice(class: &str, text: &str) -> Markup {
    html! { p class=(class) id=(class) role="status" { (text) } }
}

/// Text in `<code>`.
pub fn code(text: &str) -> Markup {
    html! { code { (text) } }
}

/// A form that posts to the server, always with the session's CSRF token: the
/// field is written by [`Form::finish`], so no form can be built without it.
pub struct Form {
    id: String,
    action: String,
    csrf: String,
    enctype: &'static str,
    class: &'static str,
    fields: Vec<Markup>,
}

impl Form {
    pub fn new(id: &str, action: &str, csrf: &str) -> Form {
        Form::build(id, action, csrf, "application/x-www-form-urlencoded", "act")
    }

    /// A form with file fields.
    pub fn multipart(id: &str, action: &str, csrf: &str) -> Form {
        Form::build(id, action, csrf, "multipart/form-data", "act")
    }

    /// A single button (pause, revoke...) shown inline.
    pub fn button(id: &str, action: &str, csrf: &str, label: &str) -> Markup {
        Form::build(id, action, csrf, "application/x-www-form-urlencoded", "inline").submit(label).finish()
    }

    fn build(id: &str, action: &str, csrf: &str, enctype: &'static str, class: &'static str) -> Form {
        Form { id: id.into(), action: action.into(), csrf: csrf.into(), enctype, class, fields: Vec::new() }
    }

    fn push(mut self, m: Markup) -> Self {
        self.fields.push(m);
        self
    }

    pub fn legend(self, text: &str) -> Self {
        self.push(html! { strong { (text) } })
    }

    /// A one-line input; `kind` is the HTML input type (text, number, password, datetime-local).
    pub fn input(self, kind: &str, name: &str, label: &str, value: &str, hint: &str) -> Self {
        self.push(html! {
            label { (label) " " input type=(kind) name=(name) value=(value) size="40"; " " small { (hint) } }
        })
    }

    pub fn textarea(self, name: &str, label: &str, value: &str, hint: &str) -> Self {
        self.push(html! {
            label { (label) " " small { (hint) } br; textarea name=(name) rows="4" cols="70" { (value) } }
        })
    }

    pub fn file(self, name: &str, label: &str) -> Self {
        self.push(html! { label { (label) " " input type="file" name=(name); } })
    }

    /// A choice among `(value, label)` options, `selected` preselected.
    pub fn select(self, name: &str, label: &str, options: &[(String, String)], selected: &str) -> Self {
        self.push(html! {
            label { (label) " " select name=(name) {
                @for (value, text) in options { option value=(value) selected[value == selected] { (text) } }
            } }
        })
    }

    /// More of the form that is already markup (a preview, a note).
    pub fn markup(self, m: Markup) -> Self {
        self.push(m)
    }

    pub fn submit(self, label: &str) -> Self {
        self.push(html! { button type="submit" { (label) } })
    }

    pub fn finish(self) -> Markup {
        html! {
            form class=(self.class) id=(self.id) method="post" action=(self.action) enctype=(self.enctype) {
                input type="hidden" name=(super::csrf::FIELD) value=(self.csrf);
                @for f in &self.fields { (f) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_in_text_and_attributes() {
        let cell = html! { (link("/ui/x?a=\"b\"", "<script>")) (status("<b>")) };
        assert_eq!(
            cell.into_string(),
            "<a href=\"/ui/x?a=&quot;b&quot;\">&lt;script&gt;</a><span class=\"s-&lt;b&gt;\">&lt;b&gt;</span>"
        );
    }

    #[test]
    fn every_form_carries_the_csrf_field() {
        let form = Form::new("f", "/ui/x", "tok\"en").submit("Go").finish().into_string();
        assert!(
            form.contains(&format!(
                "<input type=\"hidden\" name=\"{}\" value=\"tok&quot;en\">",
                super::super::csrf::FIELD
            )),
            "{form}"
        );
        assert!(Form::button("b", "/ui/y", "t", "Revoke").into_string().contains("name=\"csrf\""));
    }

    #[test]
    fn an_empty_table_says_none() {
        let t = table("t", &["a", "b"], &[]).into_string();
        assert!(t.contains("<td colspan=\"2\">none</td>"), "{t}");
    }
}
