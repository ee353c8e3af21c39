//! RSS flow hash through `ethtool` (an ioctl the kernel exposes no file for).

use std::process::Command;

pub fn available() -> bool {
    Command::new("ethtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The fields UDP/IPv4 flows hash on, as ethtool's letters ("sdfn" = addresses and ports).
pub fn read_udp4_hash(nic: &str) -> Result<String, String> {
    let out = Command::new("ethtool")
        .args(["-n", nic, "rx-flow-hash", "udp4"])
        .output()
        .map_err(|e| format!("ethtool: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ethtool -n {nic} rx-flow-hash udp4: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_hash_fields(&String::from_utf8_lossy(&out.stdout)))
}

pub fn write_udp4_hash(nic: &str, fields: &str) -> Result<(), String> {
    let out = Command::new("ethtool")
        .args(["-N", nic, "rx-flow-hash", "udp4", fields])
        .output()
        .map_err(|e| format!("ethtool: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ethtool -N {nic} rx-flow-hash udp4 {fields}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// ethtool prints one line per field; map them back to the letters `-N` takes.
fn parse_hash_fields(text: &str) -> String {
    let mut letters = String::new();
    for line in text.lines().map(str::trim) {
        let l = match line {
            "L2DA" => 'm',
            "VLAN tag" => 'v',
            "L3 proto" => 't',
            "IP SA" => 's',
            "IP DA" => 'd',
            _ if line.starts_with("L4 bytes 0 & 1") => 'f',
            _ if line.starts_with("L4 bytes 2 & 3") => 'n',
            _ => continue,
        };
        letters.push(l);
    }
    letters
}

#[cfg(test)]
mod tests {
    #[test]
    fn ethtool_hash_output_maps_to_letters() {
        let text = "UDP over IPV4 flows use these fields for computing Hash flow key:\nIP SA\nIP DA\nL4 bytes 0 & 1 [TCP/UDP src port]\nL4 bytes 2 & 3 [TCP/UDP dst port]\n\n";
        assert_eq!(super::parse_hash_fields(text), "sdfn");
        let text =
            "UDP over IPV4 flows use these fields for computing Hash flow key:\nIP SA\nIP DA\n";
        assert_eq!(super::parse_hash_fields(text), "sd");
    }
}
