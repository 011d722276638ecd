//! The saved-query parser must never panic, whatever the text; what parses
//! prints to a text that parses to the same query, and matching terminates.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(query) = hotpatch_query::parse(text) else { return };
    let printed = query.to_string();
    if printed.len() <= hotpatch_query::MAX_LEN {
        assert_eq!(hotpatch_query::parse(&printed).as_ref(), Ok(&query), "{printed:?}");
    }
    let tags = vec![text.to_string()];
    let targets = ["libssl.so.3"];
    let facts = hotpatch_query::Facts {
        hostname: text,
        os: "Debian GNU/Linux 12",
        kernel: "6.1.0",
        arch: "x86_64",
        cores: 8,
        tags: &tags,
        targets: &targets,
    };
    let _ = query.matches(&facts);
});
