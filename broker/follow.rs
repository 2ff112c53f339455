//! Following a file on disk through every way it can be replaced: written
//! in place, renamed over, deleted and made again, or swapped behind a chain
//! of symbolic links (Kubernetes mounts a ConfigMap or Secret as
//! `args.json -> ..data/args.json`, `..data -> ..TIMESTAMP`, and updates it
//! by renaming a new `..data_tmp` link over `..data`).
//!
//! inotify watches directories, not paths: after every burst of events the
//! link chain is resolved again, and the directories it passes through are
//! the ones watched. When inotify cannot be had (`max_user_instances` or
//! `max_user_watches` reached), the file's stamp is polled every second
//! instead, and the log says so once.
use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Quiet time after an event before reading: editors and deploy tools
/// touch a file several times in a row.
const SETTLE: Duration = Duration::from_millis(50);

/// The longest a steady stream of events may put off a read.
const MOST_DELAY: Duration = Duration::from_secs(1);

/// How often the stamp is checked without inotify.
pub const POLL: Duration = Duration::from_secs(1);

/// The most symbolic links followed in one resolution, as the kernel's ELOOP.
const MAX_LINKS: usize = 40;

/// Keeps a file followed; dropping it stops following.
pub struct Following {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Calls `changed` whenever `path` may hold something new: after each
/// settled burst of inotify events that touch the link chain to it, or
/// (without inotify) when its stamp changes. Also called once when
/// following starts, so a change made before the watch was set is not
/// missed. `what` names the file in log lines.
pub fn follow<F, Fut>(path: &Path, what: &'static str, mut changed: F) -> Following
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let task = tokio::spawn(async move {
        let mut inotify = match Inotify::start() {
            Ok(inotify) => Some(inotify),
            Err(err) => {
                polling_instead(what, &path, &err);
                None
            }
        };
        loop {
            if let Some(watch) = &mut inotify {
                // Watch first, then read: a change after the read is seen.
                if let Err(err) = watch.watch_chain(&path) {
                    polling_instead(what, &path, &err);
                    inotify = None;
                    continue;
                }
                changed().await;
                if !watch.next_burst(&path).await {
                    return;
                }
            } else {
                changed().await;
                poll_until_changed(&path).await;
            }
        }
    });
    Following { task }
}

/// The one line that says inotify is not used for this file.
fn polling_instead(what: &str, path: &Path, err: &notify::Error) {
    tracing::warn!(
        "cannot watch the {what} {} with inotify ({err}); checking it every {}s instead",
        path.display(),
        POLL.as_secs()
    );
}

/// An inotify watcher on the directories of one link chain.
struct Inotify {
    watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    watched: HashSet<PathBuf>,
    /// The (directory, name) pairs the chain looks up: events on others are noise.
    names: HashSet<(PathBuf, OsString)>,
}

impl Inotify {
    fn start() -> notify::Result<Self> {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })?;
        Ok(Self {
            watcher,
            events,
            watched: HashSet::new(),
            names: HashSet::new(),
        })
    }

    /// Watches the directories the chain to `path` passes through now, and
    /// no others. A directory that went away meanwhile is skipped (its
    /// removal is an event in a directory still watched); running out of
    /// inotify watches is an error.
    fn watch_chain(&mut self, path: &Path) -> notify::Result<()> {
        let chain = resolve(path);
        let dirs: HashSet<PathBuf> = chain.iter().map(|(dir, _)| dir.clone()).collect();
        for gone in self.watched.difference(&dirs) {
            // Fails when the directory was removed, which removed the watch.
            let _ = self.watcher.unwatch(gone);
        }
        self.watched.retain(|dir| dirs.contains(dir));
        for dir in dirs {
            if self.watched.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(err) if is_gone(&err) => {}
                Err(err) => return Err(err),
            }
        }
        self.names = chain.into_iter().collect();
        Ok(())
    }

    /// Waits for an event that touches the chain, then for the burst it
    /// starts to settle (at most `MOST_DELAY`). False when the watcher ended.
    async fn next_burst(&mut self, path: &Path) -> bool {
        loop {
            match self.events.recv().await {
                None => return false,
                Some(event) if self.touches(&event, path) => break,
                Some(_) => {}
            }
        }
        let deadline = Instant::now() + MOST_DELAY;
        loop {
            let quiet = (Instant::now() + SETTLE).min(deadline);
            match tokio::time::timeout_at(quiet.into(), self.events.recv()).await {
                Ok(Some(_)) if Instant::now() < deadline => continue,
                Ok(None) => return false,
                _ => return true,
            }
        }
    }

    fn touches(&self, event: &notify::Result<notify::Event>, path: &Path) -> bool {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(file = %path.display(), %err, "file watch error; reading the file again");
                return true;
            }
        };
        if event.need_rescan() {
            return true;
        }
        match event.kind {
            // Reading, or a change of mode or owner alone, is no new content.
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => return false,
            _ => {}
        }
        event.paths.iter().any(|p| {
            self.watched.contains(p)
                || match (p.parent(), p.file_name()) {
                    (Some(dir), Some(name)) => self
                        .names
                        .contains(&(dir.to_path_buf(), name.to_os_string())),
                    _ => false,
                }
        })
    }
}

fn is_gone(err: &notify::Error) -> bool {
    match &err.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => {
            matches!(io.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
        }
        _ => false,
    }
}

/// The (directory, name) pairs resolving `path` looks up that can change
/// what it names: every symbolic link met on the way and the final name,
/// each in the link-free directory that holds it. A name that does not
/// exist (yet) ends the chain: its directory is where it will appear.
pub fn resolve(path: &Path) -> Vec<(PathBuf, OsString)> {
    let mut chain = BTreeSet::new();
    let mut dir = PathBuf::from("/");
    let mut rest: Vec<OsString> = Vec::new();
    push_components(&mut rest, &mut dir, path);
    let mut links = 0;
    while let Some(name) = rest.pop() {
        if name == ".." {
            dir.pop();
            continue;
        }
        let here = dir.join(&name);
        let meta = match std::fs::symlink_metadata(&here) {
            Ok(meta) => meta,
            Err(_) => {
                chain.insert((dir, name));
                break;
            }
        };
        if meta.file_type().is_symlink() {
            chain.insert((dir.clone(), name));
            links += 1;
            let Ok(target) = std::fs::read_link(&here) else {
                break;
            };
            if links > MAX_LINKS {
                break;
            }
            push_components(&mut rest, &mut dir, &target);
        } else if rest.is_empty() {
            chain.insert((dir, name));
            break;
        } else {
            dir = here;
        }
    }
    chain.into_iter().collect()
}

/// Puts `target`'s components on the stack `rest` (first on top), starting
/// over from `/` for an absolute target. `..` stays a component: it is
/// applied when reached, to a directory that is link-free by then.
fn push_components(rest: &mut Vec<OsString>, dir: &mut PathBuf, target: &Path) {
    let mut parts: Vec<OsString> = Vec::new();
    for part in target.components() {
        match part {
            Component::RootDir => {
                *dir = PathBuf::from("/");
                parts.clear();
            }
            Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => parts.push(OsString::from("..")),
            Component::Normal(name) => parts.push(name.to_os_string()),
        }
    }
    rest.extend(parts.into_iter().rev());
}

/// Which file, and which version of it, as far as a stat can tell: another
/// inode, size or mtime means someone may have changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }

    /// When the file was last modified, in Unix milliseconds (0 if before 1970).
    pub fn modified_millis(&self) -> u64 {
        u64::try_from(self.mtime_ns / 1_000_000).unwrap_or(0)
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|meta| Stamp::of(&meta))
}

/// Whether a file with this stamp may still be written to within the same
/// mtime tick, so that an unchanged stamp proves nothing yet.
fn racy(stamp: &Stamp) -> bool {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(i128::MAX);
    now - stamp.mtime_ns < 2 * POLL.as_nanos() as i128
}

/// Checks the stamp every `POLL` until it changes (or is too recent to
/// trust).
async fn poll_until_changed(path: &Path) {
    let seen = stamp(path);
    loop {
        tokio::time::sleep(POLL).await;
        let now = stamp(path);
        if now != seen || now.as_ref().is_some_and(racy) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::resolve;
    use std::ffi::OsString;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    fn pair(dir: &std::path::Path, name: &str) -> (PathBuf, OsString) {
        (dir.to_path_buf(), OsString::from(name))
    }

    /// kubelet's layout resolves through the mount directory and the
    /// timestamped directory, and names the links on the way.
    #[test]
    fn the_atomic_writer_layout_resolves_through_both_directories() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().canonicalize().expect("canonical tempdir");
        let ts = root.join("..2026_12_07_00_20_25.123");
        std::fs::create_dir(&ts).expect("mkdir");
        std::fs::write(ts.join("args.json"), "{}").expect("write");
        symlink("..2026_12_07_00_20_25.123", root.join("..data")).expect("link");
        symlink("..data/args.json", root.join("args.json")).expect("link");
        let mut want = vec![
            pair(&root, "args.json"),
            pair(&root, "..data"),
            pair(&ts, "args.json"),
        ];
        want.sort();
        assert_eq!(resolve(&root.join("args.json")), want);
    }

    /// `..` in a link target climbs from the link's own directory; a name
    /// that is missing ends the chain where it would appear.
    #[test]
    fn parent_links_and_missing_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().canonicalize().expect("canonical tempdir");
        let sub = root.join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        symlink("../real.json", sub.join("link.json")).expect("link");
        let mut want = vec![pair(&sub, "link.json"), pair(&root, "real.json")];
        want.sort();
        assert_eq!(resolve(&sub.join("link.json")), want);
    }
}
