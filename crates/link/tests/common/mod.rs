//! Shared test helpers: compiling real objects with the machine's gcc,
//! disassembling with objdump, and mapping linked images into this process.
#![allow(dead_code)]

use hotpatch_link::{LinkedImage, Prot};
use std::process::Command;

/// The flags the build side uses for payloads.
pub const PIC: &[&str] = &["-fPIC", "-O2", "-ffunction-sections", "-fdata-sections"];
/// Non-PIC code, which uses absolute 32-bit relocations.
pub const NO_PIC: &[&str] = &["-fno-pic", "-mcmodel=small", "-O2", "-ffunction-sections", "-fdata-sections"];

/// Compiles C `source` to an object with `gcc -c flags`, returning its bytes.
pub fn compile(source: &str, flags: &[&str]) -> Vec<u8> {
    compile_to(source, flags, &["-c"], "o")
}

/// Runs gcc with extra `mode` arguments (e.g. `-shared`), returning the output file.
pub fn compile_to(source: &str, flags: &[&str], mode: &[&str], ext: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("payload.c");
    let out = dir.path().join(format!("payload.{ext}"));
    std::fs::write(&src, source).expect("write source");
    let result = Command::new("gcc").args(mode).args(flags).arg(&src).arg("-o").arg(&out).output().expect("run gcc");
    assert!(result.status.success(), "gcc failed: {}", String::from_utf8_lossy(&result.stderr));
    std::fs::read(&out).expect("read object")
}

/// One decoded instruction: address and objdump's text for it.
#[derive(Debug)]
pub struct Insn {
    pub addr: u64,
    pub text: String,
}

impl Insn {
    /// The absolute target objdump computed for a call/jmp or a RIP-relative operand.
    pub fn target(&self) -> Option<u64> {
        let t = if let Some((_, c)) = self.text.split_once('#') {
            c.split_whitespace().next()?
        } else {
            let mut words = self.text.split_whitespace();
            let op = words.next()?;
            if !(op.starts_with("call") || op.starts_with("jmp") || op.starts_with('j')) {
                return None;
            }
            words.next()?
        };
        u64::from_str_radix(t.strip_prefix("0x")?, 16).ok()
    }
}

/// Disassembles `len` bytes of `image` at `offset` with objdump, at their run-time addresses.
pub fn disassemble(image: &LinkedImage, offset: u64, len: u64) -> Vec<Insn> {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("text.bin");
    let start = usize::try_from(offset).unwrap();
    let end = start + usize::try_from(len).unwrap();
    std::fs::write(&bin, &image.bytes[start..end]).expect("write");
    let out = Command::new("objdump")
        .args(["-D", "-b", "binary", "-m", "i386:x86-64", "-w", "--no-show-raw-insn"])
        .arg(format!("--adjust-vma=0x{:x}", image.base + offset))
        .arg(&bin)
        .output()
        .expect("run objdump");
    assert!(out.status.success(), "objdump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (addr, text) = l.trim().split_once(":\t")?;
            Some(Insn { addr: u64::from_str_radix(addr.trim(), 16).ok()?, text: text.trim().to_string() })
        })
        .collect()
}

/// The instructions of the function `name`: from its symbol to the next
/// symbol, or to the `int3` padding the linker puts after the last section.
pub fn function(image: &LinkedImage, name: &str) -> Vec<Insn> {
    let start = image.symbols[name];
    let text = image.segments.iter().find(|s| s.prot == Prot::ReadExec).expect("text segment");
    let text_end = image.base + text.offset + text.len;
    let end = image.symbols.values().copied().filter(|&a| a > start).min().unwrap_or(text_end).min(text_end);
    disassemble(image, start - image.base, end - start).into_iter().take_while(|i| i.text != "int3").collect()
}

pub fn read_u64(image: &LinkedImage, addr: u64) -> u64 {
    let o = usize::try_from(addr - image.base).unwrap();
    u64::from_le_bytes(image.bytes[o..o + 8].try_into().unwrap())
}

pub fn read_i32(image: &LinkedImage, addr: u64) -> i32 {
    let o = usize::try_from(addr - image.base).unwrap();
    i32::from_le_bytes(image.bytes[o..o + 4].try_into().unwrap())
}

/// If `addr` is a call stub (`jmp *0(%rip)` + address), its destination.
pub fn stub_target(image: &LinkedImage, addr: u64) -> Option<u64> {
    let o = usize::try_from(addr.checked_sub(image.base)?).ok()?;
    let code = image.bytes.get(o..o + 14)?;
    (code[..6] == [0xff, 0x25, 0, 0, 0, 0]).then(|| u64::from_le_bytes(code[6..14].try_into().unwrap()))
}

/// The segment holding `addr`, if any.
pub fn prot_at(image: &LinkedImage, addr: u64) -> Option<Prot> {
    let off = addr.checked_sub(image.base)?;
    image.segments.iter().find(|s| off >= s.offset && off < s.offset + s.len).map(|s| s.prot)
}

/// `dlsym(RTLD_DEFAULT, name)` in this process.
pub fn dlsym(name: &str) -> Option<u64> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: looking up a symbol by a valid C string.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c.as_ptr()) };
    (!p.is_null()).then_some(p as u64)
}

/// Anonymous memory in this process, unmapped on drop.
pub struct Mapping {
    pub addr: u64,
    pub len: usize,
}

impl Mapping {
    /// Maps `len` bytes exactly at `addr`, or `None` if something is there.
    pub fn at(addr: u64, len: usize) -> Option<Mapping> {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        if p as u64 != addr {
            // Kernels without MAP_FIXED_NOREPLACE treat it as a hint.
            // SAFETY: unmapping what we just mapped.
            unsafe { libc::munmap(p, len) };
            return None;
        }
        Some(Mapping { addr, len })
    }

    /// Maps at the first free page-aligned candidate address, trying a bounded number.
    pub fn first_free(candidates: impl IntoIterator<Item = u64>, len: usize) -> Mapping {
        candidates
            .into_iter()
            .take(64)
            .find_map(|a| Mapping::at(a & !0xfff, len))
            .expect("no free address among candidates")
    }

    /// Copies the image in and applies the protections the engine would.
    pub fn load(&self, image: &LinkedImage, header_len: u64) {
        assert_eq!(image.base, self.addr);
        assert_eq!(image.bytes.len(), self.len);
        // SAFETY: the mapping is `len` bytes, writable, and ours.
        unsafe { std::ptr::copy_nonoverlapping(image.bytes.as_ptr(), self.addr as *mut u8, self.len) };
        let protect = |off: u64, len: u64, prot: i32| {
            // SAFETY: a page-aligned range inside our mapping.
            let r = unsafe { libc::mprotect((self.addr + off) as *mut libc::c_void, len as usize, prot) };
            assert_eq!(r, 0, "mprotect: {}", std::io::Error::last_os_error());
        };
        if header_len > 0 {
            protect(0, header_len, libc::PROT_READ);
        }
        for s in &image.segments {
            let prot = match s.prot {
                Prot::Read => libc::PROT_READ,
                Prot::ReadExec => libc::PROT_READ | libc::PROT_EXEC,
                Prot::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
            };
            protect(s.offset, s.len, prot);
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; nothing points into it any more.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// A replacement that exercises every relocation kind PIC code uses: calls
/// into libc (PLT32), a global of the host through the GOT (REX_GOTPCRELX),
/// static data and bss (PC32), a string literal in .rodata (PC32), a table of
/// function pointers in .data.rel.ro (R_X86_64_64), a COMMON symbol.
pub const PAYLOAD: &str = r#"
#include <stdio.h>
#include <string.h>
extern long hp_test_counter;
static int calls;
static int base_value = 40;
int hp_common_block;
void set_base(int v) { base_value = v; }
__attribute__((noinline)) static int helper(int x) { return x + base_value; }
__attribute__((noinline)) static int twice(int x) { return 2 * x; }
__attribute__((noinline)) static int thrice(int x) { return 3 * x; }
static int (*const ops[])(int) = { twice, thrice };
int apply(int i, int x) { return ops[i & 1](x); }
const char *greeting(void) { return "hello from the patch region"; }
int replacement(char *out, unsigned long n, const char *name) {
    calls++;
    hp_test_counter += 1;
    hp_common_block += 2;
    return snprintf(out, n, "hi %s len=%zu helper=%d calls=%d", name, strlen(name), helper(2), calls);
}
"#;
