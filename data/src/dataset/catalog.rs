//! The benchmark datasets: where each lives under `--root`, its split file,
//! prompt template and expected sizes (CoOp's `DATASETS.md`, `datasets/*.py`
//! and `CUSTOM_TEMPLATES` in `trainers/zsclip.py`).

use std::fmt;

/// One of the 15 benchmark datasets of the CoOp/Dassl protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Benchmark {
    ImageNet,
    Caltech101,
    OxfordPets,
    StanfordCars,
    OxfordFlowers,
    Food101,
    FgvcAircraft,
    Sun397,
    Dtd,
    EuroSat,
    Ucf101,
    ImageNetV2,
    ImageNetSketch,
    ImageNetA,
    ImageNetR,
}

/// Sizes of the full splits (CoOp paper's table; `val` = `None` where the
/// dataset has none of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub classes: usize,
    pub train: Option<usize>,
    pub val: Option<usize>,
    pub test: usize,
}

/// What the protocol says about one benchmark dataset.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    /// Dassl's `DATASET.NAME`, e.g. `OxfordPets`.
    pub name: &'static str,
    /// The CLI name, e.g. `oxford_pets`.
    pub stem: &'static str,
    /// The folder under `--root`.
    pub folder: &'static str,
    /// The image folder inside it; split paths are relative to it (empty:
    /// the dataset folder itself, as for StanfordCars).
    pub image_dir: &'static str,
    /// `split_zhou_<Name>.json`, for the datasets that have one.
    pub split_file: Option<&'static str>,
    /// The hand-written prompt template (`CUSTOM_TEMPLATES`).
    pub template: &'static str,
    pub sizes: Sizes,
    /// Other folder names this dataset is found under in mirrors and
    /// archives, for `mmrl data verify`'s advice.
    pub aliases: &'static [&'static str],
}

const fn sizes(classes: usize, train: usize, val: usize, test: usize) -> Sizes {
    Sizes {
        classes,
        train: Some(train),
        val: Some(val),
        test,
    }
}

const fn test_only(classes: usize, test: usize) -> Sizes {
    Sizes {
        classes,
        train: None,
        val: None,
        test,
    }
}

impl Benchmark {
    /// All of them, in the order of the spec's tables.
    pub const ALL: [Benchmark; 15] = [
        Benchmark::ImageNet,
        Benchmark::Caltech101,
        Benchmark::OxfordPets,
        Benchmark::StanfordCars,
        Benchmark::OxfordFlowers,
        Benchmark::Food101,
        Benchmark::FgvcAircraft,
        Benchmark::Sun397,
        Benchmark::Dtd,
        Benchmark::EuroSat,
        Benchmark::Ucf101,
        Benchmark::ImageNetV2,
        Benchmark::ImageNetSketch,
        Benchmark::ImageNetA,
        Benchmark::ImageNetR,
    ];

    /// The 10 targets of the cross-dataset protocol (all but ImageNet).
    pub const CROSS_TARGETS: [Benchmark; 10] = [
        Benchmark::Caltech101,
        Benchmark::OxfordPets,
        Benchmark::StanfordCars,
        Benchmark::OxfordFlowers,
        Benchmark::Food101,
        Benchmark::FgvcAircraft,
        Benchmark::Sun397,
        Benchmark::Dtd,
        Benchmark::EuroSat,
        Benchmark::Ucf101,
    ];

    /// The domain-generalisation targets.
    pub const DG_TARGETS: [Benchmark; 4] = [
        Benchmark::ImageNetV2,
        Benchmark::ImageNetSketch,
        Benchmark::ImageNetA,
        Benchmark::ImageNetR,
    ];

    /// Looks a dataset up by its CLI stem or its Dassl name (any case).
    pub fn from_name(name: &str) -> Option<Benchmark> {
        Self::ALL.into_iter().find(|b| {
            let i = b.info();
            i.stem == name || i.name.eq_ignore_ascii_case(name)
        })
    }

    /// Whether the dataset is only ever tested on (the ImageNet variants).
    pub fn is_test_only(self) -> bool {
        self.info().sizes.train.is_none()
    }

    pub fn info(self) -> Info {
        use Benchmark::*;
        let photo = "a photo of a {}.";
        match self {
            ImageNet => Info {
                name: "ImageNet",
                stem: "imagenet",
                folder: "imagenet",
                image_dir: "images",
                split_file: None,
                template: photo,
                sizes: Sizes {
                    classes: 1000,
                    train: Some(1_281_167),
                    val: None,
                    test: 50_000,
                },
                aliases: &["ImageNet", "ILSVRC2012", "imagenet1k"],
            },
            Caltech101 => Info {
                name: "Caltech101",
                stem: "caltech101",
                folder: "caltech-101",
                image_dir: "101_ObjectCategories",
                split_file: Some("split_zhou_Caltech101.json"),
                template: photo,
                sizes: sizes(100, 4128, 1649, 2465),
                aliases: &["caltech101", "caltech_101", "Caltech101"],
            },
            OxfordPets => Info {
                name: "OxfordPets",
                stem: "oxford_pets",
                folder: "oxford_pets",
                image_dir: "images",
                split_file: Some("split_zhou_OxfordPets.json"),
                template: "a photo of a {}, a type of pet.",
                sizes: sizes(37, 2944, 736, 3669),
                aliases: &["oxford-pets", "oxford-iiit-pet", "OxfordPets", "pets"],
            },
            StanfordCars => Info {
                name: "StanfordCars",
                stem: "stanford_cars",
                folder: "stanford_cars",
                image_dir: "",
                split_file: Some("split_zhou_StanfordCars.json"),
                template: photo,
                sizes: sizes(196, 6509, 1635, 8041),
                aliases: &[
                    "stanford-cars",
                    "StanfordCars",
                    "cars",
                    "stanford-cars-dataset",
                ],
            },
            OxfordFlowers => Info {
                name: "OxfordFlowers",
                stem: "oxford_flowers",
                folder: "oxford_flowers",
                image_dir: "jpg",
                split_file: Some("split_zhou_OxfordFlowers.json"),
                template: "a photo of a {}, a type of flower.",
                sizes: sizes(102, 4093, 1633, 2463),
                aliases: &[
                    "oxford-flowers",
                    "flowers102",
                    "flowers-102",
                    "OxfordFlowers",
                ],
            },
            Food101 => Info {
                name: "Food101",
                stem: "food101",
                folder: "food-101",
                image_dir: "images",
                split_file: Some("split_zhou_Food101.json"),
                template: "a photo of {}, a type of food.",
                sizes: sizes(101, 50500, 20200, 30300),
                aliases: &["food101", "food_101", "Food101"],
            },
            FgvcAircraft => Info {
                name: "FGVCAircraft",
                stem: "fgvc_aircraft",
                folder: "fgvc_aircraft",
                image_dir: "images",
                split_file: None,
                template: "a photo of a {}, a type of aircraft.",
                sizes: sizes(100, 3334, 3333, 3333),
                aliases: &["fgvc-aircraft", "FGVCAircraft"],
            },
            Sun397 => Info {
                name: "SUN397",
                stem: "sun397",
                folder: "sun397",
                image_dir: "SUN397",
                split_file: Some("split_zhou_SUN397.json"),
                template: photo,
                sizes: sizes(397, 15880, 3970, 19850),
                aliases: &["SUN397", "sun"],
            },
            Dtd => Info {
                name: "DescribableTextures",
                stem: "dtd",
                folder: "dtd",
                image_dir: "images",
                split_file: Some("split_zhou_DescribableTextures.json"),
                template: "{} texture.",
                sizes: sizes(47, 2820, 1128, 1692),
                aliases: &["DTD", "describable_textures"],
            },
            EuroSat => Info {
                name: "EuroSAT",
                stem: "eurosat",
                folder: "eurosat",
                image_dir: "2750",
                split_file: Some("split_zhou_EuroSAT.json"),
                template: "a centered satellite photo of {}.",
                sizes: sizes(10, 13500, 5400, 8100),
                aliases: &["EuroSAT", "EuroSAT_RGB", "euro_sat"],
            },
            Ucf101 => Info {
                name: "UCF101",
                stem: "ucf101",
                folder: "ucf101",
                image_dir: "UCF-101-midframes",
                split_file: Some("split_zhou_UCF101.json"),
                template: "a photo of a person doing {}.",
                sizes: sizes(101, 7639, 1898, 3783),
                aliases: &["UCF101", "ucf-101", "UCF-101"],
            },
            ImageNetV2 => Info {
                name: "ImageNetV2",
                stem: "imagenetv2",
                folder: "imagenetv2",
                image_dir: "imagenetv2-matched-frequency-format-val",
                split_file: None,
                template: photo,
                sizes: test_only(1000, 10_000),
                aliases: &["imagenet-v2", "imagenet_v2", "ImageNetV2"],
            },
            ImageNetSketch => Info {
                name: "ImageNetSketch",
                stem: "imagenet_sketch",
                folder: "imagenet-sketch",
                image_dir: "images",
                split_file: None,
                template: photo,
                sizes: test_only(1000, 50_889),
                aliases: &["imagenet_sketch", "ImageNetSketch", "sketch"],
            },
            ImageNetA => Info {
                name: "ImageNetA",
                stem: "imagenet_a",
                folder: "imagenet-adversarial",
                image_dir: "imagenet-a",
                split_file: None,
                template: photo,
                sizes: test_only(200, 7_500),
                aliases: &["imagenet-a", "imagenet_a", "ImageNetA"],
            },
            ImageNetR => Info {
                name: "ImageNetR",
                stem: "imagenet_r",
                folder: "imagenet-rendition",
                image_dir: "imagenet-r",
                split_file: None,
                template: photo,
                sizes: test_only(200, 30_000),
                aliases: &["imagenet-r", "imagenet_r", "ImageNetR"],
            },
        }
    }

    /// The class-name renames of Caltech101 and EuroSAT (applied after
    /// labels are assigned from the sorted folder names).
    pub fn renames(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Benchmark::Caltech101 => &[
                ("airplanes", "airplane"),
                ("Faces", "face"),
                ("Leopards", "leopard"),
                ("Motorbikes", "motorbike"),
            ],
            Benchmark::EuroSat => &[
                ("AnnualCrop", "Annual Crop Land"),
                ("Forest", "Forest"),
                ("HerbaceousVegetation", "Herbaceous Vegetation Land"),
                ("Highway", "Highway or Road"),
                ("Industrial", "Industrial Buildings"),
                ("Pasture", "Pasture Land"),
                ("PermanentCrop", "Permanent Crop Land"),
                ("Residential", "Residential Buildings"),
                ("River", "River"),
                ("SeaLake", "Sea or Lake"),
            ],
            _ => &[],
        }
    }

    /// Class folders the 50/20/30 split ignores.
    pub fn ignored(self) -> &'static [&'static str] {
        match self {
            Benchmark::Caltech101 => &["BACKGROUND_Google", "Faces_easy"],
            _ => &[],
        }
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.info().stem)
    }
}

/// The CLI names of all datasets, for error messages.
pub fn known_names() -> String {
    let mut names: Vec<&str> = Benchmark::ALL.iter().map(|b| b.info().stem).collect();
    names.extend(["folder", "csv"]);
    names.join(", ")
}
