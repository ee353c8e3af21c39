//! Files of the host, read and written under a root (`/`, or a fake `/proc` + `/sys` tree in
//! tests), and the kernel's CPU list and mask formats.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Root(PathBuf);

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    pub fn is_live(&self) -> bool {
        self.0 == Path::new("/")
    }

    /// `rel` is an absolute host path ("/proc/sys/...") taken under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel.trim_start_matches('/'))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// The file's content without its trailing newline.
    pub fn read(&self, rel: &str) -> std::io::Result<String> {
        let s = std::fs::read_to_string(self.path(rel))?;
        Ok(s.trim_end_matches('\n').to_owned())
    }

    pub fn write(&self, rel: &str, value: &str) -> std::io::Result<()> {
        let p = self.path(rel);
        if !self.is_live() {
            // A fake tree's "[selected]" file (THP) is a plain file: do what the kernel does
            // and show the written word bracketed among the others.
            if let Ok(old) = std::fs::read_to_string(&p) {
                let word = value.trim();
                let words: Vec<&str> = old.split_whitespace().collect();
                if old.contains('[')
                    && words
                        .iter()
                        .any(|w| w.trim_matches(|c| c == '[' || c == ']') == word)
                {
                    let shown: Vec<String> = words
                        .iter()
                        .map(|w| {
                            let bare = w.trim_matches(|c| c == '[' || c == ']');
                            if bare == word {
                                format!("[{bare}]")
                            } else {
                                bare.to_owned()
                            }
                        })
                        .collect();
                    return std::fs::write(p, shown.join(" ") + "\n");
                }
            }
        }
        if let Some(dir) = p.parent() {
            if !dir.exists() {
                std::fs::create_dir_all(dir)?;
            }
        }
        std::fs::write(p, value)
    }

    pub fn remove(&self, rel: &str) -> std::io::Result<()> {
        std::fs::remove_file(self.path(rel))
    }

    /// Names in a directory, sorted ("" when it does not exist).
    pub fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(rel))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort_by_key(|a| natural(a));
        names
    }
}

/// Sort key: "rx-10" after "rx-9".
fn natural(s: &str) -> (String, u64) {
    let digits: String = s.chars().rev().take_while(char::is_ascii_digit).collect();
    let n = digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    (s[..s.len() - digits.len()].to_owned(), n)
}

/// "0-3,8,10-11" -> [0, 1, 2, 3, 8, 10, 11].
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 65_536 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// [0, 1, 2, 5] -> "0-2,5".
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// The kernel's hex CPU mask ("ff", "00000001,00000000": 32-bit groups, high first) -> CPUs.
pub fn parse_cpu_mask(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    let groups: Vec<&str> = s.trim().split(',').collect();
    for (g, word) in groups.iter().rev().enumerate() {
        let v = u32::from_str_radix(word.trim(), 16).ok()?;
        for bit in 0..32 {
            if v & (1 << bit) != 0 {
                cpus.push(g * 32 + bit);
            }
        }
    }
    Some(cpus)
}

/// CPUs -> the kernel's hex mask, in 32-bit groups ("0" for none).
pub fn format_cpu_mask(cpus: &[usize]) -> String {
    let top = cpus.iter().max().map_or(0, |m| m / 32);
    let mut groups = vec![0u32; top + 1];
    for &c in cpus {
        groups[c / 32] |= 1 << (c % 32);
    }
    let mut parts: Vec<String> = groups.iter().rev().map(|g| format!("{g:08x}")).collect();
    // The kernel prints the top group without leading zeros; keep it short the same way.
    if let Some(first) = parts.first_mut() {
        let trimmed = first.trim_start_matches('0');
        *first = if trimmed.is_empty() {
            "0".to_owned()
        } else {
            trimmed.to_owned()
        };
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_masks_round_trip() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
        assert!(parse_cpu_list("3-1").is_none());
        assert!(parse_cpu_list("a").is_none());
        assert_eq!(parse_cpu_mask("ff").unwrap(), (0..8).collect::<Vec<_>>());
        assert_eq!(parse_cpu_mask("00000001,00000000").unwrap(), vec![32]);
        assert_eq!(format_cpu_mask(&[32]), "1,00000000");
        assert_eq!(format_cpu_mask(&[0, 2]), "5");
        assert_eq!(format_cpu_mask(&[]), "0");
        for cpus in [vec![1, 5, 40, 63], vec![0], vec![7, 8, 9]] {
            assert_eq!(parse_cpu_mask(&format_cpu_mask(&cpus)).unwrap(), cpus);
        }
    }
}
