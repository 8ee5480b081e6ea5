//! The CREODIAS `/eodata` layout as a static table, and the calendar below it: the only place
//! that knows which missions, instruments and product levels the tree shows, and how a level's
//! products are told apart in the catalogue. No request is needed for anything in this file.
//!
//! The layout is `/eodata/<Mission>/<Instrument>/<Level>/<YYYY>/<MM>/<DD>/<Name>`, as the
//! catalogue's `S3Path` gives it for every product. Sources for the folder names (the catalogue's
//! `S3Path` values and paths scripts use on CREODIAS and CDSE virtual machines, 2014-2026):
//! - `Sentinel-2/MSI/L1C/2018/09/27/S2A_MSIL1C_...` (the tutorial's product), `MSI/L2A/...`; the
//!   reprocessed collection (processing baseline 05.00 and later) under `MSI/L1C_N0500/` and
//!   `MSI/L2A_N0500/` with the same name test: `S3Path` tells the two apart.
//! - `Sentinel-1/SAR/GRD/2014/10/31/S1A_IW_GRDH_1SDV_...` (the catalogue's `S3Path`),
//!   `SAR/SLC/...`, `SAR/RAW/...`, `SAR/OCN/...`; newer products sit in product-type folders:
//!   `SAR/IW_GRDH_1S/2024/05/03/...`, `SAR/IW_SLC__1S/...`, `SAR/IW_RAW__0S/...`.
//! - `Sentinel-3/SLSTR/SL_1_RBT/2019/01/16/S3B_SL_1_RBT____...` (the catalogue's `S3Path`),
//!   `OLCI/OL_1_EFR/2017/05/21/...`, `OLCI/OL_2_LFR/...`, `SRAL/SR_2_LAN/...`; since about 2023
//!   the same types are written padded to 11 characters (`OLCI/OL_1_EFR___/2024/04/15/...`,
//!   `SLSTR/SL_2_LST___/2023/08/21/...`). The tree lists the short form and answers the padded
//!   one too ([`Level::alias`]); paths are compared with trailing `_` ignored ([`same_path`]).
//! - `Sentinel-5P/TROPOMI/L2__NO2___/2020/03/15/S5P_NRTI_L2__NO2____...`, `L2__CO____`,
//!   `L2__SO2___`, `L2__CH4___`, `L2__O3____`, `L2__AER_AI`, `L2__AER_LH`, ...
//!
//! Years run from the mission's first year to the current one, months and days follow the
//! calendar (UTC), and no day after today is shown.

use std::time::{SystemTime, UNIX_EPOCH};

/// One product level: a folder and the name test that finds its products in the catalogue.
#[derive(Debug)]
pub struct Level {
    /// The folder, e.g. `L1C`, `GRD`, `OL_1_EFR`, `L2__NO2___`.
    pub dir: &'static str,
    /// A text every product name of this level contains (`contains(Name,'...')`).
    pub name_test: &'static str,
    /// Another spelling of the folder that leads to the same directory (not listed).
    pub alias: Option<&'static str>,
}

#[derive(Debug)]
pub struct Instrument {
    pub dir: &'static str,
    pub levels: &'static [Level],
}

#[derive(Debug)]
pub struct Mission {
    /// The folder, e.g. `Sentinel-2`.
    pub dir: &'static str,
    /// The catalogue's `Collection/Name`, e.g. `SENTINEL-2`.
    pub collection: &'static str,
    /// The first year with products (the first satellite's launch year).
    pub first_year: i32,
    pub instruments: &'static [Instrument],
}

const fn level(dir: &'static str, name_test: &'static str) -> Level {
    Level {
        dir,
        name_test,
        alias: None,
    }
}

/// A Sentinel-3 type: listed short (`OL_1_EFR`), found by its padded 11-character form
/// (`OL_1_EFR___`, as product names spell it), which is also the folder's other spelling.
const fn s3(dir: &'static str, padded: &'static str) -> Level {
    Level {
        dir,
        name_test: padded,
        alias: Some(padded),
    }
}

/// The missions of the tree, in the order `ls` shows them (also alphabetical).
pub static MISSIONS: &[Mission] = &[
    Mission {
        dir: "Sentinel-1",
        collection: "SENTINEL-1",
        first_year: 2014,
        instruments: &[Instrument {
            dir: "SAR",
            levels: &[
                level("GRD", "_GRD"),
                level("IW_GRDH_1S", "_IW_GRDH_1S"),
                level("IW_RAW__0S", "_IW_RAW__0S"),
                level("IW_SLC__1S", "_IW_SLC__1S"),
                level("OCN", "_OCN_"),
                level("RAW", "_RAW_"),
                level("SLC", "_SLC_"),
            ],
        }],
    },
    Mission {
        dir: "Sentinel-2",
        collection: "SENTINEL-2",
        first_year: 2015,
        instruments: &[Instrument {
            dir: "MSI",
            levels: &[
                level("L1C", "MSIL1C"),
                level("L1C_N0500", "MSIL1C"),
                level("L2A", "MSIL2A"),
                level("L2A_N0500", "MSIL2A"),
            ],
        }],
    },
    Mission {
        dir: "Sentinel-3",
        collection: "SENTINEL-3",
        first_year: 2016,
        instruments: &[
            Instrument {
                dir: "OLCI",
                levels: &[
                    s3("OL_1_EFR", "OL_1_EFR___"),
                    s3("OL_1_ERR", "OL_1_ERR___"),
                    s3("OL_2_LFR", "OL_2_LFR___"),
                    s3("OL_2_LRR", "OL_2_LRR___"),
                    s3("OL_2_WFR", "OL_2_WFR___"),
                    s3("OL_2_WRR", "OL_2_WRR___"),
                ],
            },
            Instrument {
                dir: "SLSTR",
                levels: &[
                    s3("SL_1_RBT", "SL_1_RBT___"),
                    s3("SL_2_FRP", "SL_2_FRP___"),
                    s3("SL_2_LST", "SL_2_LST___"),
                    s3("SL_2_WST", "SL_2_WST___"),
                ],
            },
            Instrument {
                dir: "SRAL",
                levels: &[
                    s3("SR_1_SRA", "SR_1_SRA___"),
                    s3("SR_2_LAN", "SR_2_LAN___"),
                    s3("SR_2_WAT", "SR_2_WAT___"),
                ],
            },
            Instrument {
                dir: "SYNERGY",
                levels: &[
                    s3("SY_2_AOD", "SY_2_AOD___"),
                    s3("SY_2_SYN", "SY_2_SYN___"),
                    s3("SY_2_VG1", "SY_2_VG1___"),
                    s3("SY_2_VGP", "SY_2_VGP___"),
                ],
            },
        ],
    },
    Mission {
        dir: "Sentinel-5P",
        collection: "SENTINEL-5P",
        first_year: 2017,
        instruments: &[Instrument {
            dir: "TROPOMI",
            levels: &[
                level("L1B_IR_SIR", "_L1B_IR_SIR"),
                level("L1B_IR_UVN", "_L1B_IR_UVN"),
                level("L1B_RA_BD1", "_L1B_RA_BD1"),
                level("L1B_RA_BD2", "_L1B_RA_BD2"),
                level("L1B_RA_BD3", "_L1B_RA_BD3"),
                level("L1B_RA_BD4", "_L1B_RA_BD4"),
                level("L1B_RA_BD5", "_L1B_RA_BD5"),
                level("L1B_RA_BD6", "_L1B_RA_BD6"),
                level("L1B_RA_BD7", "_L1B_RA_BD7"),
                level("L1B_RA_BD8", "_L1B_RA_BD8"),
                level("L2__AER_AI", "_L2__AER_AI"),
                level("L2__AER_LH", "_L2__AER_LH"),
                level("L2__CH4___", "_L2__CH4___"),
                level("L2__CLOUD_", "_L2__CLOUD_"),
                level("L2__CO____", "_L2__CO____"),
                level("L2__HCHO__", "_L2__HCHO__"),
                level("L2__NO2___", "_L2__NO2___"),
                level("L2__NP_BD3", "_L2__NP_BD3"),
                level("L2__NP_BD6", "_L2__NP_BD6"),
                level("L2__NP_BD7", "_L2__NP_BD7"),
                level("L2__O3_TCL", "_L2__O3_TCL"),
                level("L2__O3__PR", "_L2__O3__PR"),
                level("L2__O3____", "_L2__O3____"),
                level("L2__SO2___", "_L2__SO2___"),
            ],
        }],
    },
];

/// A directory of the tree below the root, by indices into [`MISSIONS`] and a date as far as
/// the depth goes. `Mission(m)` is `/Sentinel-x`, `Day(...)` is `/.../YYYY/MM/DD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TreeKey {
    Mission(usize),
    Instrument(usize, usize),
    Level(usize, usize, usize),
    Year(usize, usize, usize, i32),
    Month(usize, usize, usize, i32, u32),
    Day(usize, usize, usize, i32, u32, u32),
}

/// A date (UTC): year, month 1-12, day 1-31.
pub use eodata_catalogue::date::{civil_from_days, days_from_civil, days_in_month, Date};

impl TreeKey {
    pub fn mission(&self) -> &'static Mission {
        let m = match *self {
            TreeKey::Mission(m)
            | TreeKey::Instrument(m, _)
            | TreeKey::Level(m, _, _)
            | TreeKey::Year(m, _, _, _)
            | TreeKey::Month(m, _, _, _, _)
            | TreeKey::Day(m, _, _, _, _, _) => m,
        };
        &MISSIONS[m]
    }

    /// The level, for keys at the level or below.
    pub fn level(&self) -> Option<&'static Level> {
        match *self {
            TreeKey::Level(m, i, l)
            | TreeKey::Year(m, i, l, _)
            | TreeKey::Month(m, i, l, _, _)
            | TreeKey::Day(m, i, l, _, _, _) => Some(&MISSIONS[m].instruments[i].levels[l]),
            _ => None,
        }
    }

    /// The directory's path as on a CREODIAS machine, e.g. `/eodata/Sentinel-2/MSI/L1C/2018/09/27`.
    pub fn path(&self) -> String {
        let mut p = format!("/eodata/{}", self.mission().dir);
        let (i, rest) = match *self {
            TreeKey::Mission(_) => return p,
            TreeKey::Instrument(_, i) => (i, None),
            TreeKey::Level(_, i, l) => (i, Some((l, None))),
            TreeKey::Year(_, i, l, y) => (i, Some((l, Some((y, None))))),
            TreeKey::Month(_, i, l, y, mo) => (i, Some((l, Some((y, Some((mo, None))))))),
            TreeKey::Day(_, i, l, y, mo, d) => (i, Some((l, Some((y, Some((mo, Some(d)))))))),
        };
        let inst = &self.mission().instruments[i];
        p.push('/');
        p.push_str(inst.dir);
        if let Some((l, date)) = rest {
            p.push('/');
            p.push_str(inst.levels[l].dir);
            if let Some((y, md)) = date {
                p.push_str(&format!("/{y:04}"));
                if let Some((mo, d)) = md {
                    p.push_str(&format!("/{mo:02}"));
                    if let Some(d) = d {
                        p.push_str(&format!("/{d:02}"));
                    }
                }
            }
        }
        p
    }

    /// The entries of this directory as (name, child), sorted; none after `today`. Empty for a
    /// day, whose products come from the catalogue.
    pub fn children(&self, today: Date) -> Vec<(String, TreeKey)> {
        let (ty, tm, td) = today;
        match *self {
            TreeKey::Mission(m) => MISSIONS[m]
                .instruments
                .iter()
                .enumerate()
                .map(|(i, inst)| (inst.dir.to_string(), TreeKey::Instrument(m, i)))
                .collect(),
            TreeKey::Instrument(m, i) => MISSIONS[m].instruments[i]
                .levels
                .iter()
                .enumerate()
                .map(|(l, lv)| (lv.dir.to_string(), TreeKey::Level(m, i, l)))
                .collect(),
            TreeKey::Level(m, i, l) => (MISSIONS[m].first_year..=ty)
                .map(|y| (format!("{y:04}"), TreeKey::Year(m, i, l, y)))
                .collect(),
            TreeKey::Year(m, i, l, y) => {
                let last = if y == ty { tm } else { 12 };
                (1..=last)
                    .map(|mo| (format!("{mo:02}"), TreeKey::Month(m, i, l, y, mo)))
                    .collect()
            }
            TreeKey::Month(m, i, l, y, mo) => {
                let last = if (y, mo) == (ty, tm) {
                    td
                } else {
                    days_in_month(y, mo)
                };
                (1..=last)
                    .map(|d| (format!("{d:02}"), TreeKey::Day(m, i, l, y, mo, d)))
                    .collect()
            }
            TreeKey::Day(..) => Vec::new(),
        }
    }

    /// The child named `name` (or the level's alias), if it exists on `today`. Only names as
    /// listed (`2018`, `09`, `27`): `9` is not `09`, as on the real tree.
    pub fn child(&self, name: &str, today: Date) -> Option<TreeKey> {
        if let TreeKey::Instrument(m, i) = *self {
            let levels = MISSIONS[m].instruments[i].levels;
            if let Some(l) = levels.iter().position(|lv| lv.alias == Some(name)) {
                return Some(TreeKey::Level(m, i, l));
            }
        }
        self.children(today)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k)
    }

    /// For a day: the catalogue filter of its products (collection, sensing start within the
    /// day and [`DAY_MARGIN`] either side, the level's name test), in the dialect `search`
    /// uses. The listing keeps the products whose `S3Path` names the day, and those without
    /// one whose sensing start falls on it.
    pub fn day_filter(&self) -> Option<String> {
        let TreeKey::Day(_, _, _, y, mo, d) = *self else {
            return None;
        };
        let start =
            UNIX_EPOCH + std::time::Duration::from_secs(days_from_civil(y, mo, d) as u64 * 86_400);
        let at = |at| eodata_catalogue::filter::Instant {
            at,
            day_only: false,
        };
        eodata_catalogue::filter::Criteria {
            collection: Some(self.mission().collection.to_string()),
            from: Some(at(start - DAY_MARGIN)),
            to: Some(at(eodata_catalogue::filter::next_day(start) + DAY_MARGIN)),
            name: self.level().map(|l| l.name_test.to_string()),
            ..Default::default()
        }
        .filter()
        .ok()
    }
}

/// How far past its day's bounds a day's query looks: the archive files a product under the
/// day of its datatake's start (its `S3Path`), while the catalogue's sensing start is the
/// product's own, up to a datatake's length later (Sentinel-2 datatakes run up to about 100
/// minutes). Two hours either side finds the products filed under a day that the catalogue
/// dates just after midnight, for about a sixth more results per day.
pub const DAY_MARGIN: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

/// The day (`YYYY-MM-DD`) a tree day directory's path names (`.../2018/09/27`).
pub fn path_day(dir: &str) -> Option<String> {
    let mut parts = dir.trim_end_matches('/').rsplit('/');
    let (d, m, y) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    (digits(y, 4) && digits(m, 2) && digits(d, 2)).then(|| format!("{y}-{m}-{d}"))
}

/// The mission named `name` in the root.
pub fn mission(name: &str) -> Option<TreeKey> {
    MISSIONS
        .iter()
        .position(|m| m.dir == name)
        .map(TreeKey::Mission)
}

/// Whether a product's `S3Path` lies directly in the directory `dir` (as [`TreeKey::path`]
/// writes it). Compared from the bucket on (`/eodata/`, `s3://EODATA/` alike), with trailing
/// `_` of each component ignored, since the archive writes Sentinel-3 types both short and
/// padded (see the module doc).
pub fn same_path(s3_path: &str, dir: &str) -> bool {
    let parent = s3_path
        .trim_end_matches('/')
        .rsplit_once('/')
        .map_or("", |(p, _)| p);
    let parts = |p: &str| -> Vec<String> {
        let all: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
        let from = all
            .iter()
            .position(|c| c.eq_ignore_ascii_case("eodata"))
            .map_or(0, |i| i + 1);
        all[from..]
            .iter()
            .map(|c| c.trim_end_matches('_').to_string())
            .collect()
    };
    parts(parent) == parts(dir)
}

/// Today's date, UTC.
pub fn today() -> Date {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    civil_from_days(days as i64)
}
