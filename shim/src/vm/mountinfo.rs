//! `/proc/self/mountinfo`, parsed: which mounts exist and where.
//!
//! Paths in mountinfo escape space, tab, newline and backslash as octal
//! (`\040`, `\011`, `\012`, `\134`); they are unescaped here so they compare
//! equal to real paths.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// `major:minor` of the filesystem (the same for every bind of it).
    pub dev: String,
    /// The root of the mount inside its filesystem.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

/// Undoes the kernel's octal escaping of `\`, space, tab and newline.
pub fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    if l.len() < 6 || r.len() < 3 {
        return None;
    }
    Some(MountEntry {
        id: l[0].parse().ok()?,
        parent: l[1].parse().ok()?,
        dev: l[2].to_string(),
        root: unescape(l[3]),
        mount_point: unescape(l[4]),
        fs_type: r[0].to_string(),
        source: r[1].to_string(),
        super_options: r[2].to_string(),
    })
}

/// The mounts of this process's mount namespace.
pub fn read_self() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mounts at or under `dir`, deepest first; of mounts stacked on one
/// point, the topmost (listed last) comes first.
pub fn under<'a>(mounts: &'a [MountEntry], dir: &Path) -> Vec<&'a MountEntry> {
    let mut found: Vec<(usize, &MountEntry)> = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.mount_point.starts_with(dir))
        .collect();
    found.sort_by(|(ia, a), (ib, b)| {
        let depth = |m: &MountEntry| m.mount_point.components().count();
        depth(b).cmp(&depth(a)).then(ib.cmp(ia))
    });
    found.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
100 22 0:50 / /run/husk/p1 rw shared:40 - tmpfs tmpfs rw
101 100 8:1 /srv/data /run/husk/p1/shared rw shared:41 - ext4 /dev/sda1 rw
102 101 8:1 /srv/data /run/husk/p1/shared rw shared:41 - ext4 /dev/sda1 rw
103 102 0:60 / /run/husk/p1/shared/c1/rootfs rw master:3 - overlay overlay rw,lowerdir=/a
104 22 0:61 / /run/husk/p10 rw - tmpfs tmpfs rw
105 22 0:62 / /tmp/with\\040space\\134x rw - tmpfs tmpfs rw
garbage line
";

    #[test]
    fn parses_fields_and_optional_tags() {
        let m = parse(TEXT);
        assert_eq!(m.len(), 7);
        assert_eq!(m[2].id, 101);
        assert_eq!(m[2].parent, 100);
        assert_eq!(m[2].dev, "8:1");
        assert_eq!(m[2].root, PathBuf::from("/srv/data"));
        assert_eq!(m[2].mount_point, PathBuf::from("/run/husk/p1/shared"));
        assert_eq!(m[4].fs_type, "overlay");
        assert_eq!(m[4].source, "overlay");
        assert_eq!(m[4].super_options, "rw,lowerdir=/a");
    }

    #[test]
    fn unescapes_octal() {
        let m = parse(TEXT);
        assert_eq!(m[6].mount_point, PathBuf::from("/tmp/with space\\x"));
        assert_eq!(unescape("a\\011b\\012c"), PathBuf::from("a\tb\nc"));
        // Not an escape: left as is.
        assert_eq!(unescape("a\\9b\\"), PathBuf::from("a\\9b\\"));
    }

    #[test]
    fn under_is_deepest_first_and_topmost_first() {
        let m = parse(TEXT);
        let ids: Vec<u32> = under(&m, Path::new("/run/husk/p1"))
            .iter()
            .map(|e| e.id)
            .collect();
        // p10 is not under p1 (component-wise prefix).
        assert_eq!(ids, vec![103, 102, 101, 100]);
    }

    #[test]
    fn reads_own_mountinfo() {
        let m = read_self().unwrap();
        assert!(m.iter().any(|e| e.mount_point == Path::new("/")));
    }
}
