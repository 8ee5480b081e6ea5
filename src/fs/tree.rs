//! The `/eodata` tree in the root of a plain mount: `Sentinel-2/MSI/L1C/2018/09/27/<Name>.zip`,
//! so that scripts written for a CREODIAS virtual machine run unchanged against a mount.
//!
//! Missions, instruments, levels, years, months and days come from the static table and the
//! calendar (`layout`): listing or looking them up costs no request. A day is a query directory
//! (`query`) made on first use: its filter is the mission's collection, the level's name test and
//! a sensing start within the day; its listing is paged, ordered and kept for `--listing-ttl`
//! like any query's, and holds only the products whose `S3Path` (when the catalogue gives one)
//! names that day's directory, so a product sits where the real archive puts it.
//!
//! This file owns the tree's inodes ([`Tree`]) and the `Fs` hooks that serve them. Directories
//! get inode numbers when first met and keep them for the mount's life (at most a few hundred
//! thousand: levels times days).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use eodata_fetch::RangeSource;

use super::layout::{self, TreeKey};
use super::query::{Listing, QueryDir, QuerySpec};
use super::{Attr, Fs, FsError, Resolver, ROOT_INO};

/// Most products one day lists: as deep as the catalogue pages (`$skip` stops at 10,000, plus
/// one last page of 1,000). A busy day of Sentinel-2 L1C holds a few thousand.
pub const DAY_MAX_RESULTS: usize = 11_000;

/// A directory of the tree.
pub(super) struct TreeNode {
    pub key: TreeKey,
    pub parent: u64,
    /// For a day: its catalogue query, and the directory its products' `S3Path` must name.
    pub day: Option<Arc<QueryDir>>,
}

/// The tree's inodes, made on first use.
#[derive(Default)]
pub(super) struct Tree {
    by_key: Mutex<HashMap<TreeKey, u64>>,
    nodes: Mutex<HashMap<u64, Arc<TreeNode>>>,
}

impl Tree {
    pub fn node(&self, ino: u64) -> Option<Arc<TreeNode>> {
        self.nodes.lock().unwrap().get(&ino).cloned()
    }
}

impl<R: Resolver, S: RangeSource> Fs<R, S> {
    fn tree_on(&self) -> bool {
        self.config.tree && !self.config.listed_only
    }

    /// The inode of a tree directory (made on first use).
    fn tree_ino(&self, key: TreeKey, parent: u64) -> u64 {
        let mut by_key = self.tree.by_key.lock().unwrap();
        if let Some(ino) = by_key.get(&key) {
            return *ino;
        }
        let ino = self.inodes.lock().unwrap().alloc();
        let day = key.day_filter().map(|filter| {
            Arc::new(QueryDir {
                spec: QuerySpec {
                    name: Some(key.path()),
                    filter,
                },
                listing: tokio::sync::Mutex::new(Listing::default()),
                max_results: DAY_MAX_RESULTS,
                place: Some(key.path()),
            })
        });
        self.tree
            .nodes
            .lock()
            .unwrap()
            .insert(ino, Arc::new(TreeNode { key, parent, day }));
        by_key.insert(key, ino);
        ino
    }

    /// Whether `ino` is a directory of the tree.
    pub(super) fn is_tree_dir(&self, ino: u64) -> bool {
        self.tree.node(ino).is_some()
    }

    /// The missions beside the root's other entries.
    pub(super) fn tree_add_root(&self, names: &mut BTreeMap<String, u64>) {
        if !self.tree_on() {
            return;
        }
        for (m, mission) in layout::MISSIONS.iter().enumerate() {
            let ino = self.tree_ino(TreeKey::Mission(m), ROOT_INO);
            names.insert(mission.dir.to_string(), ino);
        }
    }

    /// `lookup` of a mission in the root; `None` when `name` is none.
    pub(super) fn tree_lookup_root(&self, name: &str) -> Option<Attr> {
        if !self.tree_on() {
            return None;
        }
        let key = layout::mission(name)?;
        Some(self.dir_attr(self.tree_ino(key, ROOT_INO)))
    }

    /// The day's query directory, if `ino` is a day.
    pub(super) fn tree_day(&self, ino: u64) -> Option<Arc<QueryDir>> {
        self.tree.node(ino).and_then(|n| n.day.clone())
    }

    /// `lookup` of `name` in a tree directory above the days.
    pub(super) fn tree_lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        let dir = self.tree.node(parent).ok_or(FsError::NotFound)?;
        let key = dir
            .key
            .child(name, layout::today())
            .ok_or(FsError::NotFound)?;
        Ok(self.dir_attr(self.tree_ino(key, parent)))
    }

    /// The entries of a tree directory above the days, `.` and `..` not included.
    pub(super) fn tree_entries(&self, ino: u64) -> Option<(u64, BTreeMap<String, u64>)> {
        let dir = self.tree.node(ino)?;
        let names = dir
            .key
            .children(layout::today())
            .into_iter()
            .map(|(name, key)| {
                let child = self.tree_ino(key, ino);
                (name, child)
            })
            .collect();
        Some((dir.parent, names))
    }

    /// The status file's lines about the tree: on or off, and the days listed so far (each
    /// cost the catalogue requests of its listing).
    pub(super) fn tree_status(&self) -> String {
        if !self.tree_on() {
            return "tree: off\n".into();
        }
        let nodes: Vec<Arc<TreeNode>> = self.tree.nodes.lock().unwrap().values().cloned().collect();
        let (mut days, mut products) = (0, 0);
        for day in nodes.iter().filter_map(|n| n.day.as_ref()) {
            // A listing being fetched right now counts on the next read.
            if let Ok(l) = day.listing.try_lock() {
                if l.fetched_at.is_some() {
                    days += 1;
                    products += l.entries.len();
                }
            }
        }
        format!("tree: on\ntree.days_listed: {days}\ntree.products_listed: {products}\n")
    }

    /// The parent of a tree directory (for `..`).
    pub(super) fn tree_parent(&self, ino: u64) -> Option<u64> {
        self.tree.node(ino).map(|n| n.parent)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::UNIX_EPOCH;

    use eodata_fetch::cache::{BlockCache, CacheConfig};
    use eodata_fetch::mock::MemorySource;

    use super::super::{FsConfig, Kind, ProductMeta, S3PATH_XATTR};
    use super::*;

    const NAME: &str = "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE";
    const DAY: &str = "/eodata/Sentinel-2/MSI/L1C/2018/09/27";

    /// Answers every day filter of 2018-09-27 with its products, other filters with none;
    /// records the filters asked.
    #[derive(Default)]
    struct DayResolver {
        products: Vec<ProductMeta>,
        filters: std::sync::Mutex<Vec<String>>,
        calls: AtomicUsize,
    }

    impl Resolver for DayResolver {
        async fn resolve(&self, _: &str) -> Result<Option<ProductMeta>, FsError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        }
        async fn query(&self, filter: &str, _: usize) -> Result<Vec<ProductMeta>, FsError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.filters.lock().unwrap().push(filter.to_string());
            Ok(if filter.contains("ge 2018-09-26T22:00:00.000Z") {
                self.products.clone()
            } else {
                Vec::new()
            })
        }
    }

    fn meta(id: &str, name: &str, s3: Option<&str>) -> ProductMeta {
        ProductMeta {
            id: id.into(),
            name: name.into(),
            mtime: UNIX_EPOCH,
            online: true,
            size_hint: Some(1000),
            xattrs: s3
                .map(|p| (S3PATH_XATTR.to_string(), p.to_string()))
                .into_iter()
                .collect(),
        }
    }

    type TestFs = Fs<Arc<DayResolver>, Arc<MemorySource>>;

    fn fs(config: FsConfig) -> (Arc<TestFs>, Arc<DayResolver>) {
        fs_with(
            config,
            vec![
                meta("a", NAME, Some(&format!("{DAY}/{NAME}"))),
                // The reprocessed collection: same name test, another folder.
                meta(
                    "b",
                    "S2A_MSIL1C_20180927T051221_N0500_R033_T42FXL_20230101T000000.SAFE",
                    Some("/eodata/Sentinel-2/MSI/L1C_N0500/2018/09/27/x.SAFE"),
                ),
                // No S3Path: listed where the name test and the date put it.
                meta(
                    "c",
                    "S2B_MSIL1C_20180927T000000_N0206_R001_T01AAA_20180927T010000.SAFE",
                    None,
                ),
            ],
        )
    }

    fn fs_with(config: FsConfig, products: Vec<ProductMeta>) -> (Arc<TestFs>, Arc<DayResolver>) {
        let resolver = Arc::new(DayResolver {
            products,
            ..DayResolver::default()
        });
        let cache = Arc::new(BlockCache::new(
            Arc::new(MemorySource::new()),
            CacheConfig::default(),
        ));
        (Arc::new(Fs::new(resolver.clone(), cache, config)), resolver)
    }

    /// The entries of `ino` but `.` and `..`.
    async fn names(fs: &TestFs, ino: u64) -> Vec<String> {
        let mut all = crate::fs::tests::entry_names(fs, ino).await;
        all.retain(|n| n != "." && n != "..");
        all
    }

    async fn walk(fs: &TestFs, path: &str) -> Result<Attr, FsError> {
        let mut ino = ROOT_INO;
        let mut attr = fs.getattr(ROOT_INO).await?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            attr = fs.lookup(ino, OsStr::new(part)).await?;
            ino = attr.ino;
        }
        Ok(attr)
    }

    fn on() -> FsConfig {
        FsConfig {
            tree: true,
            ..FsConfig::default()
        }
    }

    /// The day's query looks two hours past each bound: a product the archive files under the
    /// 27th but the catalogue dates the 26th at 23:30 is listed on the 27th; one without an
    /// S3Path that the catalogue dates on the 26th is left to the 26th.
    #[tokio::test]
    async fn a_product_filed_under_a_day_but_sensed_before_midnight_is_listed_there() {
        let with_start = |id: &str, name: &str, s3: Option<&str>, start: &str| {
            let mut m = meta(id, name, s3);
            m.xattrs
                .push((super::super::CONTENT_START_XATTR.into(), start.into()));
            m
        };
        let late = "S2A_MSIL1C_20180927T000500_N0206_R001_T01AAB_20180927T010000.SAFE";
        let early = "S2B_MSIL1C_20180926T230000_N0206_R001_T01AAC_20180926T235900.SAFE";
        let (fs, _) = fs_with(
            on(),
            vec![
                with_start(
                    "d",
                    late,
                    Some(&format!("{DAY}/{late}")),
                    "2018-09-26T23:30:00.000Z",
                ),
                with_start("e", early, None, "2018-09-26T23:00:00.000Z"),
                with_start("f", NAME, None, "2018-09-27T05:12:21.000Z"),
            ],
        );
        let day = walk(&fs, "Sentinel-2/MSI/L1C/2018/09/27").await.unwrap();
        assert_eq!(
            names(&fs, day.ino).await,
            [format!("{late}.zip"), format!("{NAME}.zip")]
        );
    }

    #[test]
    fn a_day_directory_names_its_day() {
        assert_eq!(layout::path_day(DAY).as_deref(), Some("2018-09-27"));
        assert_eq!(layout::path_day("/eodata/Sentinel-2/MSI/L1C/2018/09"), None);
        assert_eq!(layout::path_day("x/2018/9/27"), None);
    }

    #[tokio::test]
    async fn upper_levels_come_from_the_table_and_a_day_from_one_query() {
        let (fs, resolver) = fs(on());
        assert_eq!(
            names(&fs, ROOT_INO).await,
            ["Sentinel-1", "Sentinel-2", "Sentinel-3", "Sentinel-5P"]
        );
        let s2 = walk(&fs, "Sentinel-2").await.unwrap();
        assert_eq!(names(&fs, s2.ino).await, ["MSI"]);
        let msi = walk(&fs, "Sentinel-2/MSI").await.unwrap();
        assert_eq!(
            names(&fs, msi.ino).await,
            ["L1C", "L1C_N0500", "L2A", "L2A_N0500"]
        );
        let l1c = walk(&fs, "Sentinel-2/MSI/L1C").await.unwrap();
        let years = names(&fs, l1c.ino).await;
        assert_eq!(years.first().map(String::as_str), Some("2015"));
        assert_eq!(years.last(), Some(&format!("{:04}", layout::today().0)));
        let sep = walk(&fs, "Sentinel-2/MSI/L1C/2018/09").await.unwrap();
        assert_eq!(names(&fs, sep.ino).await.len(), 30);
        assert_eq!(
            fs.readdir(sep.ino).await.unwrap()[1].attr.ino,
            walk(&fs, "Sentinel-2/MSI/L1C/2018").await.unwrap().ino,
            ".."
        );
        for bad in [
            "Sentinel-2/MSI/L1C/2018/9",
            "Sentinel-2/MSI/L1C/2018/09/31",
            "Sentinel-2/MSI/L1C/2014",
            "Sentinel-2/MSI/L3",
            "Sentinel-9",
        ] {
            assert!(
                matches!(walk(&fs, bad).await, Err(FsError::NotFound)),
                "{bad}"
            );
        }
        assert_eq!(
            resolver.calls.load(Ordering::SeqCst),
            0,
            "no request above the days"
        );

        let day = walk(&fs, "Sentinel-2/MSI/L1C/2018/09/27").await.unwrap();
        assert_eq!(day.kind, Kind::Directory);
        let listed = names(&fs, day.ino).await;
        assert_eq!(
            listed,
            [
                format!("{NAME}.zip"),
                "S2B_MSIL1C_20180927T000000_N0206_R001_T01AAA_20180927T010000.SAFE.zip".to_string()
            ],
            "the N0500 product sits where its S3Path says"
        );
        assert_eq!(
            *resolver.filters.lock().unwrap(),
            ["Collection/Name eq 'SENTINEL-2' and ContentDate/Start ge 2018-09-26T22:00:00.000Z \
              and ContentDate/Start lt 2018-09-28T02:00:00.000Z and contains(Name,'MSIL1C')"]
        );
        let zip = walk(&fs, &format!("Sentinel-2/MSI/L1C/2018/09/27/{NAME}.zip"))
            .await
            .unwrap();
        assert_eq!((zip.kind, zip.size), (Kind::File, 1000));
        assert_eq!(
            String::from_utf8(fs.getxattr(day.ino, "user.eodata.filter").unwrap()).unwrap(),
            resolver.filters.lock().unwrap()[0]
        );
        // Kept for the listing TTL: another ls and lookups ask nothing.
        names(&fs, day.ino).await;
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 1);
        // Unlisted names in a day are not looked up.
        assert!(matches!(
            fs.lookup(day.ino, OsStr::new("S2A_OTHER.SAFE.zip")).await,
            Err(FsError::NotFound)
        ));
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 1);
        let n0500 = walk(&fs, "Sentinel-2/MSI/L1C_N0500/2018/09/27")
            .await
            .unwrap();
        assert_eq!(
            names(&fs, n0500.ino).await,
            [
                "S2A_MSIL1C_20180927T051221_N0500_R033_T42FXL_20230101T000000.SAFE.zip",
                "S2B_MSIL1C_20180927T000000_N0206_R001_T01AAA_20180927T010000.SAFE.zip"
            ]
        );
        assert!(matches!(
            fs.open(day.ino, false).await,
            Err(FsError::IsADirectory)
        ));
        let status = fs.status_text();
        assert!(
            status.contains("tree: on\ntree.days_listed: 2\ntree.products_listed: 4\n"),
            "{status}"
        );
    }

    #[tokio::test]
    async fn the_tree_is_off_without_the_switch_and_under_listed_only() {
        for config in [
            FsConfig::default(),
            FsConfig {
                listed_only: true,
                ..on()
            },
        ] {
            let (fs, resolver) = fs(config);
            assert!(names(&fs, ROOT_INO).await.is_empty());
            assert!(fs.status_text().contains("tree: off\n"));
            assert!(matches!(
                walk(&fs, "Sentinel-2").await,
                Err(FsError::NotFound)
            ));
            assert_eq!(resolver.calls.load(Ordering::SeqCst), 0);
        }
    }

    #[test]
    fn the_calendar_has_no_future_days_and_knows_leap_years() {
        let l1c = TreeKey::Level(1, 0, 0);
        let today = (2024, 2, 29);
        let years: Vec<_> = l1c.children(today).into_iter().map(|(n, _)| n).collect();
        assert_eq!(years.first().unwrap(), "2015");
        assert_eq!(years.last().unwrap(), "2024");
        let months = |y| TreeKey::Year(1, 0, 0, y).children(today).len();
        assert_eq!(
            (months(2023), months(2024)),
            (12, 2),
            "no month after today's"
        );
        let days = |y, m| TreeKey::Month(1, 0, 0, y, m).children(today).len();
        assert_eq!(days(2024, 2), 29, "today, a leap day, is the last");
        assert_eq!(days(2023, 2), 28);
        assert_eq!(days(2020, 2), 29);
        assert_eq!(days(2023, 4), 30);
        assert_eq!(days(2023, 12), 31);
        assert_eq!(
            TreeKey::Month(1, 0, 0, 2024, 1)
                .children((2024, 1, 5))
                .len(),
            5
        );
        assert!(TreeKey::Month(1, 0, 0, 2023, 2)
            .child("29", today)
            .is_none());
        assert!(TreeKey::Year(1, 0, 0, 2024).child("03", today).is_none());
        assert!(l1c.child("2025", today).is_none());
        assert_eq!(
            (
                layout::days_in_month(2000, 2),
                layout::days_in_month(2100, 2)
            ),
            (29, 28)
        );
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2018, 9, 27), (2100, 3, 1)] {
            assert_eq!(
                layout::civil_from_days(layout::days_from_civil(y, m, d)),
                (y, m, d)
            );
        }
        let t = layout::today();
        assert!(t.0 >= 2026 && (1..=12).contains(&t.1) && t.2 <= layout::days_in_month(t.0, t.1));
    }

    #[test]
    fn levels_paths_and_s3paths() {
        let olci = layout::mission("Sentinel-3")
            .unwrap()
            .children((2024, 1, 1));
        let olci = olci.iter().find(|(n, _)| n == "OLCI").unwrap().1;
        let efr = olci.child("OL_1_EFR", (2024, 1, 1)).unwrap();
        assert_eq!(
            olci.child("OL_1_EFR___", (2024, 1, 1)),
            Some(efr),
            "the padded spelling"
        );
        let day = TreeKey::Day(2, 0, 0, 2024, 4, 15);
        assert_eq!(day.path(), "/eodata/Sentinel-3/OLCI/OL_1_EFR/2024/04/15");
        assert!(day
            .day_filter()
            .unwrap()
            .ends_with("contains(Name,'OL_1_EFR___')"));
        assert!(layout::same_path(
            "/eodata/Sentinel-3/OLCI/OL_1_EFR___/2024/04/15/S3B_OL_1_EFR____X.SEN3",
            &day.path()
        ));
        assert!(layout::same_path(
            "s3://EODATA/Sentinel-3/OLCI/OL_1_EFR/2024/04/15/x.SEN3/",
            &day.path()
        ));
        assert!(!layout::same_path(
            "/eodata/Sentinel-3/OLCI/OL_1_ERR/2024/04/15/x",
            &day.path()
        ));
        assert!(!layout::same_path(
            "/eodata/Sentinel-3/OLCI/OL_1_EFR/2024/04/15",
            &day.path()
        ));
        assert!(!layout::same_path(
            "/eodata/Sentinel-3/OLCI/OL_1_EFR/2024/04/16/x",
            &day.path()
        ));
        assert_eq!(TreeKey::Level(0, 0, 0).path(), "/eodata/Sentinel-1/SAR/GRD");
        assert_eq!(
            TreeKey::Instrument(3, 0).path(),
            "/eodata/Sentinel-5P/TROPOMI"
        );
        // Every level's folders are distinct and listed in order.
        for m in layout::MISSIONS {
            for i in m.instruments {
                let dirs: Vec<_> = i.levels.iter().map(|l| l.dir).collect();
                let mut sorted = dirs.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(dirs, sorted, "{}/{}", m.dir, i.dir);
            }
        }
    }
}
