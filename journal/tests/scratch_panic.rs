use std::path::Path;
use tryswap_fsm::*;
use tryswap_journal::Journal;
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
#[test]
fn scan() {
    let t = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(t.path()).unwrap();
        for n in 0..40u128 {
            let id = ReloadId::from_u128(n + 1);
            let slot = SlotName::new(format!("s{}", n % 3)).unwrap();
            j.execute(
                &Command::Stage {
                    reload: id,
                    slot,
                    mode: Mode::DryRun,
                    artifact: ArtifactRef {
                        sha256: Sha256([n as u8; 32]),
                        config_sha256: None,
                    },
                },
                chrono::Utc::now(),
            )
            .unwrap();
            j.execute(
                &Command::Fail {
                    reload: id,
                    reason: Reason::error("x"),
                },
                chrono::Utc::now(),
            )
            .unwrap();
        }
    }
    let len = std::fs::metadata(t.path().join("sled/db")).unwrap().len() as usize;
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..200usize {
        let d = tempfile::tempdir().unwrap();
        copy_dir(t.path(), d.path());
        let snaps: Vec<_> = std::fs::read_dir(d.path().join("sled"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("snap"))
            .collect();
        if i == 0 {
            eprintln!(
                "files {:?}",
                std::fs::read_dir(d.path().join("sled"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect::<Vec<_>>()
            );
        }
        let target = if i % 2 == 0 && !snaps.is_empty() {
            snaps[0].clone()
        } else {
            d.path().join("sled/db")
        };
        let mut bytes = std::fs::read(&target).unwrap();
        let len = bytes.len().max(1);
        let pos = (i * 7919) % len;
        if i % 3 == 0 {
            for b in bytes.iter_mut().skip(pos).take(8) {
                *b = 0xff;
            }
        } else {
            for b in bytes.iter_mut().skip(pos).take(1 + i % 9) {
                *b ^= 0xa5;
            }
        }
        std::fs::write(&target, bytes).unwrap();
        let r = std::panic::catch_unwind(|| {
            Journal::open(d.path()).map(|j| j.verify().map(|r| r.problems.len()))
        });
        let key = match r {
            Err(_) => "PANIC ESCAPED".to_string(),
            Ok(Ok(Ok(n))) => format!("opened, {n} problems"),
            Ok(Ok(Err(e))) => format!("verify err {e}"),
            Ok(Err(e)) => e.to_string().chars().take(60).collect(),
        };
        let key = key.replace(d.path().to_str().unwrap(), "D");
        *counts.entry(key).or_insert(0) += 1;
    }
    for (k, v) in counts {
        eprintln!("{v:3} {k}");
    }
}
