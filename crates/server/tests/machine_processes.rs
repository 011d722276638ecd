//! Per process, per target: the agent's process list is stored with the target
//! (latest check-in only) and the machine page lists each process with its
//! service unit, level and state; an agent that sends no list keeps working, and
//! a bad list is refused by name without changing what was stored.

mod common;

use common::*;
use hotpatch_format::Classification;
use serde_json::{Value, json};

fn checkin(s: &TestServer, cred: &str, process_list: Value) -> (u16, Value) {
    let mut body = checkin_body("web-1", 2, &[(BUILD_A, "libdemo.so.1", 0)], json!([]));
    body["targets"][0]["processes"] = json!(process_list.as_array().map_or(1, Vec::len));
    if !process_list.is_null() {
        body["targets"][0]["process_list"] = process_list;
    }
    s.post("/api/v1/agent/checkin", cred, body)
}

/// The machine page's processes table as (pid, service, level, state) rows.
fn processes(s: &TestServer, id: &str) -> Vec<[String; 4]> {
    let (st, link) = s.post("/api/v1/ui-links", &s.admin, json!({}));
    assert_eq!(st, 200, "{link}");
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = agent.get(&format!("{}{}", s.base, link["path"].as_str().unwrap_or_default())).call().expect("link");
    let cookie = r.header("set-cookie").and_then(|c| c.split(';').next()).expect("cookie").to_string();
    let html = agent
        .get(&format!("{}/ui/machines/{id}", s.base))
        .set("Cookie", &cookie)
        .call()
        .expect("machine page")
        .into_string()
        .expect("text");
    let Some(table) = html.split("<table id=\"processes\">").nth(1).and_then(|t| t.split("</table>").next()) else {
        return Vec::new();
    };
    let cell = |c: &str| c.split("</td>").next().unwrap_or_default().replace("<span class=\"s-", "").to_string();
    table
        .split("<tr>")
        .skip(2)
        .map(|row| {
            let cells: Vec<String> = row.split("<td>").skip(1).map(cell).collect();
            let state = cells[4].split("\">").next().unwrap_or_default().to_string();
            [cells[1].clone(), cells[2].clone(), cells[3].clone(), state]
        })
        .collect()
}

#[test]
fn the_machine_page_lists_each_process_of_a_target_with_its_state() {
    let s = TestServer::start(&Backend::Sqlite);
    s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
    let (id, cred) = s.enroll(&[], "web-1");

    // An agent from before the process list: accepted, and the page says why nothing is listed.
    let (st, v) = checkin(&s, &cred, Value::Null);
    assert_eq!(st, 200, "{v}");
    assert_eq!(processes(&s, &id), Vec::<[String; 4]>::new());

    let list = json!([
        { "pid": 4242, "unit": "nginx.service", "applied_level": 1, "applied_patch_id": "fix-1" },
        { "pid": 4243, "unit": "nginx.service", "applied_level": 0 },
        { "pid": 777, "applied_level": 0 }
    ]);
    let (st, v) = checkin(&s, &cred, list);
    assert_eq!(st, 200, "{v}");
    let row = |pid: &str, unit: &str, level: &str, state: &str| [pid, unit, level, state].map(str::to_string);
    let want = [
        row("4242", "nginx.service", "1", "patched"),
        row("4243", "nginx.service", "0", "pending"),
        row("777", "", "0", "pending"),
    ];
    assert_eq!(processes(&s, &id), want);

    // A bad list is refused by name, and the last good one stays.
    let (st, v) = checkin(&s, &cred, json!([{ "pid": 0, "applied_level": 0 }]));
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("pid 0"), "{v}");
    let (st, v) = checkin(&s, &cred, json!([{ "pid": 5, "applied_level": 0, "comm": "x" }]));
    assert!(st == 400 || st == 422, "unknown fields are refused: {st} {v}");
    assert_eq!(processes(&s, &id), want);

    // The latest check-in only: the processes that exited are gone.
    let (st, v) = checkin(&s, &cred, json!([{ "pid": 9000, "unit": "demo.service", "applied_level": 1 }]));
    assert_eq!(st, 200, "{v}");
    assert_eq!(processes(&s, &id), [row("9000", "demo.service", "1", "patched")]);
}
