//! Run-pre matching: proving that a function of the builder's original
//! build is the baseline's code, byte for byte once each relocation is
//! resolved against the baseline.
//!
//! Every byte outside a relocation field must be equal. Each relocation
//! field of the baseline is read back into the address it reaches, and that
//! address must be what the original object refers to: the named symbol's
//! address in the baseline, a PLT entry or GOT slot bound to that name, or a
//! string or constant with the same contents. Linker relaxations that
//! rewrite an instruction (`mov foo@GOTPCREL` → `lea foo`) are accepted only
//! in the exact form the linker produces.

use crate::baseline::{Baseline, GotSlot, Learned};
use crate::objfile::{ObjectFile, RefKey, field_width, is_tls, pc_relative};
use hotpatch_elf::Symbol;

/// The first difference between the builder's original function and the baseline's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub function: String,
    pub offset: u64,
    pub detail: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} differs at offset 0x{:x}: {}", self.function, self.offset, self.detail)
    }
}

/// Checks the function `sym` of the original object `obj` against the
/// baseline's function `at`.
pub fn match_function(baseline: &Baseline<'_>, obj: &ObjectFile, sym: usize, at: &Symbol) -> Result<(), Mismatch> {
    let s = &obj.symbols[sym];
    let fail = |offset: u64, detail: String| Mismatch { function: s.name.clone(), offset, detail };
    let Some(section_index) = s.section else { return Err(fail(0, "not defined in the object".into())) };
    let section = &obj.sections[section_index];
    let size = if s.size > 0 { s.size } else { section.size };
    // A located symbol's size is the object's (the table had none).
    if size != at.size && at.size != 0 {
        return Err(fail(0, format!("{} bytes in the builder's build, {} in the baseline", size, at.size)));
    }
    let ours =
        section.data.get(s.value as usize..(s.value + size) as usize).ok_or_else(|| fail(0, "truncated".into()))?;
    // A symbol located without a size (learned from a reference to it) is
    // compared over the builder's size.
    let sized = hotpatch_elf::Symbol { size, ..at.clone() };
    let theirs = baseline.function_bytes(&sized).ok_or_else(|| fail(0, "not in an executable segment".into()))?;
    let mut covered = vec![false; ours.len()];
    let mut learned = Learned::new();
    for r in section.relocs.iter().filter(|r| r.offset >= s.value && r.offset < s.value + size) {
        let offset = r.offset - s.value;
        let width = field_width(r.r_type).ok_or_else(|| fail(offset, format!("relocation type {}", r.r_type)))?;
        let field = offset as usize..offset as usize + width;
        if field.end > ours.len() {
            return Err(fail(offset, "relocation past the end".into()));
        }
        covered[field.clone()].iter_mut().for_each(|c| *c = true);
        if is_tls(r.r_type) {
            // The TLS access sequence is rewritten by the linker in several
            // ways; its offset is not checked here. A function that uses TLS
            // is refused before it could be replaced.
            mark_tls_sequence(&mut covered, offset as usize);
            continue;
        }
        let key = obj.key(r);
        let place = at.address + offset;
        let at_field = Field { r_type: r.r_type, place, bytes: &theirs[field.clone()], offset: offset as usize };
        check_relocation(baseline, obj, &key, &at_field, ours, theirs, &mut learned).map_err(|d| fail(offset, d))?;
        if relaxed(r.r_type, ours, theirs, offset as usize) {
            covered[offset as usize - 2] = true;
            covered[offset as usize - 1] = true;
        }
    }
    if let Some(i) = (0..ours.len()).find(|&i| !covered[i] && ours[i] != theirs[i]) {
        return Err(fail(
            i as u64,
            format!("byte 0x{:02x} in the builder's build, 0x{:02x} in the baseline", ours[i], theirs[i]),
        ));
    }
    baseline.learn(learned);
    if at.size == 0 {
        // Located by a reference, now proven whole: its size is the object's.
        let file = if s.local { obj.source_file.clone() } else { None };
        baseline.prove_size(&(s.name.clone(), file), size);
    }
    Ok(())
}

/// One relocation field as the baseline has it.
struct Field<'a> {
    r_type: u32,
    /// Its link-time address in the baseline.
    place: u64,
    bytes: &'a [u8],
    /// Its offset in the function.
    offset: usize,
}

/// A TLS access's opcode bytes around the field may be rewritten (GD → IE →
/// LE relaxation): they are left out of the byte comparison.
fn mark_tls_sequence(covered: &mut [bool], offset: usize) {
    let start = offset.saturating_sub(4);
    let end = (offset + 12).min(covered.len());
    covered[start..end].iter_mut().for_each(|c| *c = true);
}

/// Whether the linker relaxed a GOT-indirect instruction into a direct one.
fn relaxed(r_type: u32, ours: &[u8], theirs: &[u8], offset: usize) -> bool {
    use object::elf::{R_X86_64_GOTPCRELX, R_X86_64_REX_GOTPCRELX};
    if !matches!(r_type, R_X86_64_GOTPCRELX | R_X86_64_REX_GOTPCRELX) || offset < 2 {
        return false;
    }
    let (o, t) = (&ours[offset - 2..offset], &theirs[offset - 2..offset]);
    // mov foo@GOTPCREL(%rip), %reg → lea foo(%rip), %reg
    (o[0] == 0x8b && t[0] == 0x8d && o[1] == t[1])
        // call *foo@GOTPCREL(%rip) → addr32 call foo
        || (o == [0xff, 0x15] && t == [0x67, 0xe8])
}

fn read_field(bytes: &[u8]) -> i64 {
    match bytes.len() {
        8 => i64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])),
        4 => i64::from(i32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]))),
        _ => 0,
    }
}

fn check_relocation(
    baseline: &Baseline<'_>,
    obj: &ObjectFile,
    key: &RefKey,
    field: &Field<'_>,
    ours: &[u8],
    theirs: &[u8],
    learned: &mut Learned,
) -> Result<(), String> {
    use object::elf::*;
    let (r_type, place, offset) = (field.r_type, field.place, field.offset);
    if field.bytes.is_empty() {
        return Ok(());
    }
    let value = read_field(field.bytes);
    // What the field reaches: S + A for every type the builder checks.
    let reached = if pc_relative(r_type) { (place as i64).wrapping_add(value) as u64 } else { value as u64 };
    let got_indirect = matches!(r_type, R_X86_64_GOTPCREL | R_X86_64_GOTPCRELX | R_X86_64_REX_GOTPCRELX)
        && !relaxed(r_type, ours, theirs, offset);
    match key {
        RefKey::Named { name, local, offset: delta } => {
            if got_indirect {
                return check_got(baseline, name, *local, obj, reached.wrapping_sub(*delta as u64));
            }
            check_named(baseline, obj, Target { name, local: *local, delta: *delta, reached }, learned)
        }
        RefKey::String { content, offset: delta } | RefKey::Constant { content, offset: delta } => {
            let start = reached.wrapping_sub(*delta as u64);
            let is_string = matches!(key, RefKey::String { .. });
            let len = content.len() as u64 + u64::from(is_string);
            let found = baseline.elf.bytes_at(start, len).unwrap_or(&[]);
            let want: Vec<u8> = content.iter().copied().chain(is_string.then_some(0)).collect();
            if found == want.as_slice() {
                Ok(())
            } else {
                Err(format!(
                    "refers to {} {:?}, the baseline has {:?} there",
                    if is_string { "the string" } else { "the constant" },
                    String::from_utf8_lossy(content),
                    String::from_utf8_lossy(found)
                ))
            }
        }
        // Where anonymous data (a jump table) lands is the linker's choice;
        // its contents are compared with the function that owns it.
        RefKey::Anonymous { .. } => Ok(()),
    }
}

/// A named symbol a relocation field reaches.
struct Target<'a> {
    name: &'a str,
    local: bool,
    /// The offset from the symbol's start the reference carries.
    delta: i64,
    reached: u64,
}

fn check_named(baseline: &Baseline<'_>, obj: &ObjectFile, t: Target<'_>, learned: &mut Learned) -> Result<(), String> {
    let (name, target) = (t.name, t.reached.wrapping_sub(t.delta as u64));
    let file = if t.local { obj.source_file.clone() } else { None };
    let key = (name.to_owned(), file.clone());
    let known = baseline
        .lookup(name, t.local, obj.source_file.as_deref())
        .ok()
        .or_else(|| learned.iter().find(|(k, _)| *k == key).map(|(_, s)| s.clone()));
    match (known, baseline.plt_name(target)) {
        (Some(sym), _) if sym.address == target => Ok(()),
        (_, Some(n)) if n == name => Ok(()),
        (Some(sym), _) => Err(format!(
            "refers to {name} (0x{:x} in the baseline), the baseline's code reaches 0x{target:x}",
            sym.address
        )),
        (None, Some(n)) => Err(format!("calls {name}, the baseline calls {n} through its PLT")),
        // Absent from the table (a stripped file's static or hidden symbol),
        // reached directly inside the baseline (an import would go through
        // the PLT or GOT): the baseline's code says where it is. Kept if the
        // whole function matches, and every later reference must agree.
        // (`.bss` has no bytes in the file, only in memory.)
        (None, None)
            if baseline.elf.load_segments().iter().any(|s| s.vaddr <= target && target - s.vaddr < s.memsz) =>
        {
            let function = baseline.elf.is_executable_range(target, 1);
            learned.push((key, learned_symbol(obj, name, file, target, function)));
            Ok(())
        }
        (None, None) => {
            Err(format!("refers to {name}, which the baseline neither defines nor imports at 0x{target:x}"))
        }
    }
}

fn learned_symbol(obj: &ObjectFile, name: &str, file: Option<String>, address: u64, function: bool) -> Symbol {
    let s = obj.find(name).map(|i| &obj.symbols[i]);
    Symbol {
        name: name.to_owned(),
        file,
        address,
        size: s.map_or(0, |s| s.size),
        kind: if function { hotpatch_elf::SymbolKind::Function } else { hotpatch_elf::SymbolKind::Object },
        local: s.is_some_and(|s| s.local),
        source: hotpatch_elf::SymbolSource::Symtab,
    }
}

fn check_got(baseline: &Baseline<'_>, name: &str, local: bool, obj: &ObjectFile, slot: u64) -> Result<(), String> {
    match baseline.got_slot(slot) {
        Some(GotSlot::Named(n)) if n == name => Ok(()),
        Some(GotSlot::Address(a)) => match baseline.lookup(name, local, obj.source_file.as_deref()) {
            Ok(sym) if sym.address == *a => Ok(()),
            _ => Err(format!("loads {name} from the GOT, the baseline's slot holds 0x{a:x}")),
        },
        Some(GotSlot::Named(n)) => Err(format!("loads {name} from the GOT, the baseline's slot is for {n}")),
        None => Err(format!("loads {name} from the GOT, the baseline has no GOT slot at 0x{slot:x}")),
    }
}
