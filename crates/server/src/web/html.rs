//! The string-built pages' helpers, kept only for the pages not yet rendered
//! with maud (`view`): escaping by hand, and the body put into `view::page`'s frame.

use std::fmt::Write;

/// Escapes text for HTML element content and double-quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

pub struct Page {
    body: String,
}

impl Page {
    pub fn new() -> Page {
        Page { body: String::new() }
    }

    pub fn raw(&mut self, html: &str) -> &mut Self {
        self.body.push_str(html);
        self
    }

    pub fn h(&mut self, level: u8, text: &str) -> &mut Self {
        let _ = write!(self.body, "<h{level}>{}</h{level}>", esc(text));
        self
    }

    pub fn p(&mut self, text: &str) -> &mut Self {
        let _ = write!(self.body, "<p>{}</p>", esc(text));
        self
    }

    /// A table whose cells are already HTML (use [`esc`] or [`status`] to make them).
    pub fn table(&mut self, id: &str, headers: &[&str], rows: &[Vec<String>]) -> &mut Self {
        let _ = write!(self.body, "<table id=\"{}\"><thead><tr>", esc(id));
        for h in headers {
            let _ = write!(self.body, "<th>{}</th>", esc(h));
        }
        self.body.push_str("</tr></thead><tbody>");
        for r in rows {
            self.body.push_str("<tr>");
            for c in r {
                let _ = write!(self.body, "<td>{c}</td>");
            }
            self.body.push_str("</tr>");
        }
        if rows.is_empty() {
            let _ = write!(self.body, "<tr><td colspan=\"{}\">none</td></tr>", headers.len());
        }
        self.body.push_str("</tbody></table>");
        self
    }

    /// The page in the shared frame; the body was built from escaped parts.
    pub fn render(&self, title: &str, who: Option<(&str, &str)>) -> String {
        super::view::page(title, who, maud::PreEscaped(self.body.clone()))
    }
}

impl Default for Page {
    fn default() -> Self {
        Page::new()
    }
}

/// A status word with its colour class.
pub fn status(word: &str) -> String {
    format!("<span class=\"s-{0}\">{0}</span>", esc(word))
}

/// A message box above a form: what went wrong (`error`) or what was done (`notice`).
pub fn notice(class: &str, text: &str) -> String {
    format!("<p class=\"{0}\" id=\"{0}\" role=\"status\">{1}</p>", esc(class), esc(text))
}

/// A form that posts to the server, always with the session's CSRF token.
pub struct Form {
    html: String,
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
    pub fn button(id: &str, action: &str, csrf: &str, label: &str) -> String {
        Form::build(id, action, csrf, "application/x-www-form-urlencoded", "inline").submit(label).finish()
    }

    fn build(id: &str, action: &str, csrf: &str, enctype: &str, class: &str) -> Form {
        Form {
            html: format!(
                "<form class=\"{class}\" id=\"{}\" method=\"post\" action=\"{}\" enctype=\"{enctype}\">\
                 <input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(id),
                esc(action),
                super::csrf::FIELD,
                esc(csrf)
            ),
        }
    }

    pub fn legend(mut self, text: &str) -> Self {
        let _ = write!(self.html, "<strong>{}</strong>", esc(text));
        self
    }

    /// A one-line input; `kind` is the HTML input type (text, number, password, datetime-local).
    pub fn input(mut self, kind: &str, name: &str, label: &str, value: &str, hint: &str) -> Self {
        let _ = write!(
            self.html,
            "<label>{} <input type=\"{}\" name=\"{}\" value=\"{}\" size=\"40\"> <small>{}</small></label>",
            esc(label),
            esc(kind),
            esc(name),
            esc(value),
            esc(hint)
        );
        self
    }

    pub fn textarea(mut self, name: &str, label: &str, value: &str, hint: &str) -> Self {
        let _ = write!(
            self.html,
            "<label>{} <small>{}</small><br><textarea name=\"{}\" rows=\"4\" cols=\"70\">{}</textarea></label>",
            esc(label),
            esc(hint),
            esc(name),
            esc(value)
        );
        self
    }

    pub fn file(mut self, name: &str, label: &str) -> Self {
        let _ = write!(self.html, "<label>{} <input type=\"file\" name=\"{}\"></label>", esc(label), esc(name));
        self
    }

    /// A choice among `(value, label)` options, `selected` preselected.
    pub fn select(mut self, name: &str, label: &str, options: &[(String, String)], selected: &str) -> Self {
        let _ = write!(self.html, "<label>{} <select name=\"{}\">", esc(label), esc(name));
        for (value, text) in options {
            let sel = if value == selected { " selected" } else { "" };
            let _ = write!(self.html, "<option value=\"{}\"{sel}>{}</option>", esc(value), esc(text));
        }
        self.html.push_str("</select></label>");
        self
    }

    pub fn raw(mut self, html: &str) -> Self {
        self.html.push_str(html);
        self
    }

    pub fn submit(mut self, label: &str) -> Self {
        let _ = write!(self.html, "<button type=\"submit\">{}</button>", esc(label));
        self
    }

    pub fn finish(mut self) -> String {
        self.html.push_str("</form>");
        self.html
    }
}

pub fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", esc(href), esc(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc("<script>\"x\" & 'y'</script>"), "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;");
    }
}
