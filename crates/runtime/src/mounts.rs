//! OCI mount options (`nosuid`, `ro`, `rbind`, `mode=755` …) as mount flags and data.

use flotilla_sys::MsFlags;

/// What `options` ask of `mount(2)`: flags, data for the file system, whether it is a bind
/// mount, and the propagation to set after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub flags: MsFlags,
    pub data: Vec<String>,
    pub bind: bool,
    pub propagation: Option<MsFlags>,
}

pub fn parse(options: &[String]) -> Parsed {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    let mut bind = false;
    let mut propagation = None;
    for o in options {
        match o.as_str() {
            "ro" | "rro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "rrw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => flags &= !MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => flags &= !MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => flags &= !MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "async" => flags &= !MsFlags::MS_SYNCHRONOUS,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                flags |= MsFlags::MS_REC;
            }
            "private" => propagation = Some(MsFlags::MS_PRIVATE),
            "rprivate" => propagation = Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "slave" => propagation = Some(MsFlags::MS_SLAVE),
            "rslave" => propagation = Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "shared" => propagation = Some(MsFlags::MS_SHARED),
            "rshared" => propagation = Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
            "defaults" => {}
            other => data.push(other.to_string()),
        }
    }
    Parsed {
        flags,
        data,
        bind,
        propagation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_flags_and_data() {
        let opts: Vec<String> = ["nosuid", "strictatime", "mode=755", "size=65536k"]
            .map(String::from)
            .to_vec();
        let p = parse(&opts);
        assert_eq!(p.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(p.data, ["mode=755", "size=65536k"]);
        assert!(!p.bind);
        let p = parse(&["rbind".into(), "ro".into(), "rprivate".into()]);
        assert!(p.bind && p.flags.contains(MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(p.propagation, Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC));
    }
}
