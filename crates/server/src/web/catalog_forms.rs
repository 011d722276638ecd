//! Catalog forms: upload a signed hotpatch (multipart), register a baseline.
//! Both go through the API's handlers, so checks and audit entries are the API's.

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::form::{UiForm, api_body, done, failed, guard};
use super::session::UiUser;
use super::view::{Form, Markup};
use crate::api::catalog;
use crate::api::json::ApiJson;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub fn upload_form(u: &UiUser) -> Markup {
    Form::multipart("upload-hotpatch", "/ui/catalog/hotpatches", &u.1)
        .legend("Upload a signed hotpatch")
        .file("package", "Package (.hpatch)")
        .submit("Upload")
        .finish()
}

/// The baseline form, filled with `b` (what was posted, after an error).
pub fn baseline_form(u: &UiUser, b: &BaselineFields) -> Markup {
    let kinds = [("planned".to_string(), "planned".to_string()), ("unplanned".to_string(), "unplanned".to_string())];
    Form::new("register-baseline", "/ui/catalog/baselines", &u.1)
        .legend("Register a baseline")
        .input("text", "name", "Name", &b.name, "e.g. 2027.04")
        .input("text", "product", "Product", &b.product, "")
        .input("text", "released", "Released", &b.released, "YYYY-MM-DD (UTC) or an RFC 3339 time")
        .select("kind", "Kind", &kinds, &b.kind)
        .input("text", "reason", "Reason", &b.reason, "for an unplanned baseline: the fix it carries")
        .textarea("targets", "Targets", &b.targets, "one per line: file name, then build-id")
        .submit("Register baseline")
        .finish()
}

/// Reads the upload's fields; the origin is checked before the file is read.
async fn read_upload(headers: &HeaderMap, mut mp: Multipart) -> ApiResult<Vec<u8>> {
    super::csrf::check_origin(headers)?;
    let mut token = None;
    let mut package = None;
    let bad = |e: axum::extract::multipart::MultipartError| ApiError::BadRequest(format!("upload unreadable: {e}"));
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        match field.name() {
            Some(super::csrf::FIELD) => token = Some(field.text().await.map_err(bad)?),
            Some("package") => package = Some(field.bytes().await.map_err(bad)?.to_vec()),
            _ => {}
        }
    }
    guard(headers, token.as_deref())?;
    package.filter(|p| !p.is_empty()).ok_or_else(|| ApiError::BadRequest("choose a .hpatch file to upload".into()))
}

pub async fn upload(
    State(st): State<AppState>,
    u: UiUser,
    headers: HeaderMap,
    mp: Result<Multipart, MultipartRejection>,
) -> Response {
    let result = async {
        let mp = mp.map_err(|e| ApiError::BadRequest(format!("upload must be a multipart form: {e}")))?;
        let bytes = read_upload(&headers, mp).await?;
        let axum::Json(v) = catalog::upload_hotpatch(State(st), u.0.clone(), Ok(Bytes::from(bytes))).await?;
        Ok::<_, ApiError>(v["patch_id"].as_str().unwrap_or_default().to_string())
    }
    .await;
    match result {
        Ok(id) => done(&format!("/ui/catalog?done=uploaded&subject={}", urlencode(&id))),
        Err(e) => failed(&u, "Upload a hotpatch", &e, upload_form(&u)),
    }
}

#[derive(Deserialize, Default)]
pub struct BaselineFields {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub product: String,
    #[serde(default)]
    pub released: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub targets: String,
}

/// A release day typed as a date means midnight UTC that day.
fn release_time(text: &str) -> String {
    let t = text.trim();
    if t.len() == 10 && t.as_bytes().get(4) == Some(&b'-') { format!("{t}T00:00:00Z") } else { t.to_string() }
}

fn baseline_body(b: &BaselineFields) -> ApiResult<catalog::NewBaseline> {
    let mut targets = Vec::new();
    for (n, line) in b.targets.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(file), Some(build), None) => targets.push(json!({ "file_name": file, "build_id": build })),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "targets line {}: expected a file name and a build-id, found {line:?}",
                    n + 1
                )));
            }
        }
    }
    api_body(json!({
        "name": b.name.trim(), "product": b.product.trim(), "released": release_time(&b.released),
        "planned": b.kind != "unplanned", "reason": b.reason.trim(), "targets": targets,
    }))
}

pub async fn create_baseline(State(st): State<AppState>, form: UiForm<BaselineFields>) -> Response {
    let UiForm { user: u, fields: b } = form;
    let result = async {
        let body = baseline_body(&b)?;
        catalog::create_baseline(State(st), u.0.clone(), ApiJson(body)).await
    }
    .await;
    match result {
        Ok(_) => done(&format!("/ui/catalog?done=baseline&subject={}", urlencode(b.name.trim()))),
        Err(e) => failed(&u, "Register a baseline", &e, baseline_form(&u, &b)),
    }
}

/// Percent-encodes a value for a query string.
pub fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("", text)]).map(|s| s[1..].to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_targets() {
        assert_eq!(release_time("2027-04-13"), "2027-04-13T00:00:00Z");
        assert_eq!(release_time("2027-04-13T10:00:00Z"), "2027-04-13T10:00:00Z");
        assert_eq!(urlencode("a b&c"), "a+b%26c");
        let bad = BaselineFields { targets: "libssl.so.3".into(), ..Default::default() };
        assert!(baseline_body(&bad).is_err_and(|e| e.to_string().contains("line 1")));
    }
}
