//! The builder reads relocatable objects of builds it did not make: any bytes
//! give an error or a diff, never a panic; the first half is the original
//! object, the second the fixed one.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (a, b) = data.split_at(data.len() / 2);
    let (Ok(old), Ok(new)) = (hotpatch_build::ObjectFile::parse("a.o", a), hotpatch_build::ObjectFile::parse("b.o", b))
    else {
        return;
    };
    let (old, new) = (old.with_signatures(a), new.with_signatures(b));
    let _ = hotpatch_build::diff::diff_objects(&old, &new, Some(&[(10, 2)]));
});
