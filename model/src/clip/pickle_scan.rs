//! A check of PyTorch pickles before they are unpickled. The unpicklers we
//! use (burn-store's and candle's) allocate the length a string or bytes
//! opcode claims before reading it, so a corrupt or hostile file could make
//! them ask for gigabytes. This walks the opcodes without building objects
//! and refuses any length that runs past the end of the pickle, any unknown
//! opcode and any pickle without its STOP. It runs no code and allocates
//! nothing the file claims.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The most bytes of pickle read from one zip entry (a checkpoint's
/// `data.pkl` holds names and shapes, never tensor data: kilobytes to a few
/// megabytes).
const MAX_PICKLE: u64 = 256 << 20;

/// Checks every `*.pkl` of a PyTorch zip checkpoint, or the leading pickles
/// of a legacy (pre-1.6) file. `Err` says what is wrong.
pub fn check_file(path: &Path) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(|e| e.to_string())?;
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    if n == 4 && magic == *b"PK\x03\x04" {
        // The archive's directory and its pickles only: the tensor data
        // (gigabytes for large CLIPs) is not read.
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| format!("not a readable zip archive: {e}"))?;
        let pickles: Vec<String> = zip
            .file_names()
            .filter(|n| n.ends_with(".pkl"))
            .map(String::from)
            .collect();
        for name in pickles {
            let mut entry = zip
                .by_name(&name)
                .map_err(|e| format!("zip entry {name}: {e}"))?;
            let pkl = read_at_most(&mut entry).map_err(|e| format!("{name}: {e}"))?;
            let end = check(&pkl).map_err(|e| format!("{name}: {e}"))?;
            if end != pkl.len() {
                return Err(format!(
                    "{name}: {} bytes after the pickle's end",
                    pkl.len() - end
                ));
            }
        }
        Ok(())
    } else {
        // Legacy: the magic number, protocol, system info, the object and
        // the storage keys, one pickle after the other at the start of the
        // file, then the raw storages (not read here).
        let head = read_at_most(&mut file)?;
        let mut at = 0;
        for _ in 0..5 {
            at += check(&head[at..])?;
        }
        Ok(())
    }
}

/// The first [`MAX_PICKLE`] + 1 bytes of `r`: pickles are far smaller, and
/// the scan refuses a pickle that does not end within them.
fn read_at_most(r: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(MAX_PICKLE + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Walks one pickle; returns its length (up to and including STOP).
pub fn check(p: &[u8]) -> Result<usize, String> {
    let mut i = 0;
    let need = |i: usize, n: u64| -> Result<usize, String> {
        if n > (p.len() - i) as u64 {
            Err(format!(
                "an opcode at byte {i} claims {n} bytes, {} remain: the file is corrupt",
                p.len() - i
            ))
        } else {
            Ok(n as usize)
        }
    };
    let le = |i: usize, n: usize| -> Result<u64, String> {
        need(i, n as u64)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&p[i..i + n]);
        Ok(u64::from_le_bytes(v))
    };
    let line = |i: usize| -> Result<usize, String> {
        p[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|n| n + 1)
            .ok_or_else(|| format!("an opcode at byte {i} has no end of line"))
    };
    while i < p.len() {
        let op = p[i];
        let at = i;
        i += 1;
        let skip = match op {
            // STOP
            b'.' => return Ok(i),
            // No argument: marks, containers, stack and memo operations.
            b'(' | b')' | b']' | b'}' | b'0' | b'1' | b'2' | b'N' | b'R' | b'a' | b'b' | b'd'
            | b'e' | b'l' | b's' | b't' | b'u' | b'o' | b'\x85' | b'\x86' | b'\x87' | b'\x88'
            | b'\x89' | b'\x81' | b'\x92' | b'\x93' | b'\x94' | b'\x8f' | b'\x90' | b'\x91'
            | b'\x97' | b'\x98' | b'Q' => 0,
            // Fixed-size arguments.
            b'K' | b'h' | b'q' | b'\x80' | b'\x82' => 1,
            b'M' | b'\x83' => 2,
            b'J' | b'j' | b'r' | b'\x84' => 4,
            b'G' => 8,
            // Newline-terminated arguments (GLOBAL has two lines).
            b'I' | b'L' | b'F' | b'S' | b'V' | b'P' | b'g' | b'p' => line(i)?,
            b'c' | b'i' => {
                let first = line(i)?;
                first + line(i + first)?
            }
            // Length-prefixed arguments.
            b'U' | b'C' | b'\x8c' | b'\x8a' => 1 + need(i + 1, le(i, 1)?)?,
            b'T' | b'B' | b'X' | b'\x8b' => 4 + need(i + 4, le(i, 4)?)?,
            b'\x8d' | b'\x8e' | b'\x96' => 8 + need(i + 8, le(i, 8)?)?,
            // FRAME: a length of the frame that follows, which must fit.
            b'\x95' => {
                need(i + 8, le(i, 8)?)?;
                8
            }
            other => {
                return Err(format!(
                    "unknown pickle opcode 0x{other:02x} at byte {at}: not a PyTorch checkpoint"
                ))
            }
        };
        i += need(i, skip as u64)?;
    }
    Err("the pickle ends without its STOP opcode: the file is cut short".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_past_the_end_and_unknown_opcodes_are_refused() {
        // protocol 2, SHORT_BINUNICODE "ab", BININT1 7, TUPLE2, STOP
        let ok = b"\x80\x02\x8c\x02abK\x07\x86.";
        assert_eq!(check(ok), Ok(ok.len()));
        // BINUNICODE claiming 4 GB.
        let huge = b"\x80\x02X\xff\xff\xff\xffab.";
        assert!(check(huge).unwrap_err().contains("claims 4294967295 bytes"));
        assert!(check(b"\x80\x02\xff.")
            .unwrap_err()
            .contains("unknown pickle opcode 0xff"));
        assert!(check(b"\x80\x02K\x07").unwrap_err().contains("STOP"));
        // GLOBAL with its two lines.
        assert!(check(b"\x80\x02ctorch\nFloatStorage\n.").is_ok());
        assert!(check(b"\x80\x02ctorch\nFloat").is_err());
    }
}
