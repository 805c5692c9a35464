//! A generated world for the offline demo: pictures of one object that
//! varies in shape, colour, texture, size, position and background, with
//! captions made from those attributes ("a photo of a small red striped
//! triangle on the left."), and a classification task over colour × shape.
//!
//! Everything is a pure function of `(seed, what, index)`: a picture is drawn
//! from its own ChaCha8 stream, so the world is the same on every machine,
//! whatever the threads or batch sizes.
//!
//! The task's classes are the 64 (colour, shape) pairs, in an order that
//! puts half of them first: the protocol's rule (the first ⌈n/2⌉ labels are
//! *base*) then makes the base classes a checkerboard of the colour × shape
//! grid. Every colour and every shape occurs among the base classes, but no
//! novel pair does: the novel classes are new *combinations* of attributes
//! that training on the base classes never shows.

use std::path::Path;

use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::{Error, Result};

/// Colour names and their RGB values.
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [215, 40, 40]),
    ("orange", [240, 135, 25]),
    ("yellow", [235, 220, 40]),
    ("green", [45, 165, 55]),
    ("cyan", [40, 205, 215]),
    ("blue", [40, 70, 215]),
    ("purple", [135, 55, 195]),
    ("pink", [245, 125, 195]),
];

/// Shape names.
pub const SHAPES: [&str; 8] = [
    "circle", "square", "triangle", "diamond", "cross", "star", "ring", "heart",
];

/// Surface patterns.
pub const TEXTURES: [&str; 4] = ["plain", "striped", "dotted", "checkered"];

/// Size names and radii (fractions of the picture's side).
pub const SIZES: [(&str, f32); 2] = [("small", 0.17), ("large", 0.28)];

/// Where the object is: phrase and centre (fractions of the side).
pub const POSITIONS: [(&str, f32, f32); 5] = [
    ("in the middle", 0.5, 0.5),
    ("on the left", 0.31, 0.5),
    ("on the right", 0.69, 0.5),
    ("at the top", 0.5, 0.31),
    ("at the bottom", 0.5, 0.69),
];

/// Background names and colours.
pub const BACKGROUNDS: [(&str, [u8; 3]); 3] = [
    ("dark", [30, 32, 38]),
    ("grey", [125, 125, 125]),
    ("light", [225, 222, 214]),
];

/// Caption openings; `{}` is the object's description.
const CAPTION_TEMPLATES: [&str; 5] = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a rendering of a {}.",
    "a {}.",
];

/// Domain tags of the ChaCha8 streams (key bytes 0..8).
const PRETRAIN_DOMAIN: &[u8; 8] = b"world-pt";
const TASK_DOMAIN: &[u8; 8] = b"world-tk";

/// One object on one background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scene {
    pub colour: usize,
    pub shape: usize,
    pub texture: usize,
    pub size: usize,
    pub position: usize,
    pub background: usize,
}

fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

fn unit(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32
}

/// A stream for picture `index` of `what` in the world `seed`.
fn stream(domain: &[u8; 8], seed: u64, what: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(domain);
    key[8..16].copy_from_slice(&seed.to_le_bytes());
    key[16..24].copy_from_slice(&what.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(index);
    rng
}

impl Scene {
    /// Every attribute drawn uniformly.
    pub fn random(rng: &mut ChaCha8Rng) -> Scene {
        Scene {
            colour: below(rng, COLOURS.len()),
            shape: below(rng, SHAPES.len()),
            texture: below(rng, TEXTURES.len()),
            size: below(rng, SIZES.len()),
            position: below(rng, POSITIONS.len()),
            background: below(rng, BACKGROUNDS.len()),
        }
    }

    /// A description naming the shape and, each with its own probability,
    /// the other attributes: "a photo of a large green dotted star at the top."
    pub fn caption(&self, rng: &mut ChaCha8Rng) -> String {
        let mut words: Vec<&str> = Vec::new();
        if unit(rng) < 0.5 {
            words.push(SIZES[self.size].0);
        }
        words.push(COLOURS[self.colour].0);
        if unit(rng) < 0.5 {
            words.push(TEXTURES[self.texture]);
        }
        words.push(SHAPES[self.shape]);
        if unit(rng) < 0.4 {
            words.push(POSITIONS[self.position].0);
        }
        let background;
        if unit(rng) < 0.3 {
            background = format!("on a {} background", BACKGROUNDS[self.background].0);
            words.push(&background);
        }
        let template = CAPTION_TEMPLATES[below(rng, CAPTION_TEMPLATES.len())];
        template.replace("{}", &words.join(" "))
    }

    /// Draws the scene at `side × side` pixels (2 × 2 supersampling), with
    /// jitter of position, size, colour and pixel noise from `rng`.
    pub fn render(&self, side: usize, rng: &mut ChaCha8Rng) -> RgbImage {
        let (_, px, py) = POSITIONS[self.position];
        let cx = (px + (unit(rng) - 0.5) * 0.08) * side as f32;
        let cy = (py + (unit(rng) - 0.5) * 0.08) * side as f32;
        let radius = SIZES[self.size].1 * (0.9 + 0.2 * unit(rng)) * side as f32;
        let jitter =
            |c: u8, rng: &mut ChaCha8Rng| (c as f32 + (unit(rng) - 0.5) * 40.0).clamp(0.0, 255.0);
        let base = COLOURS[self.colour].1;
        let fg = [
            jitter(base[0], rng),
            jitter(base[1], rng),
            jitter(base[2], rng),
        ];
        let bgc = BACKGROUNDS[self.background].1;
        let bg = [
            jitter(bgc[0], rng),
            jitter(bgc[1], rng),
            jitter(bgc[2], rng),
        ];
        // Texture period in pixels and phase.
        let period = (side as f32 / 8.0).max(3.0);
        let phase = unit(rng) * period;
        let mut img = RgbImage::new(side as u32, side as u32);
        for y in 0..side {
            for x in 0..side {
                let mut acc = [0.0f32; 3];
                for (sx, sy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                    let (fx, fy) = (x as f32 + sx, y as f32 + sy);
                    let (dx, dy) = ((fx - cx) / radius, (fy - cy) / radius);
                    let c = if inside(self.shape, dx, dy) {
                        if textured(self.texture, fx + phase, fy + phase, period) {
                            [fg[0] * 0.3, fg[1] * 0.3, fg[2] * 0.3]
                        } else {
                            fg
                        }
                    } else {
                        bg
                    };
                    for k in 0..3 {
                        acc[k] += c[k] * 0.25;
                    }
                }
                let noise = (unit(rng) - 0.5) * 24.0;
                let p = acc.map(|v| (v + noise).clamp(0.0, 255.0).round() as u8);
                img.put_pixel(x as u32, y as u32, image::Rgb(p));
            }
        }
        img
    }
}

/// Whether `(dx, dy)` (offsets in radii, y down) lies inside `shape`.
fn inside(shape: usize, dx: f32, dy: f32) -> bool {
    let r2 = dx * dx + dy * dy;
    match SHAPES[shape] {
        "circle" => r2 <= 1.0,
        "square" => dx.abs().max(dy.abs()) <= 0.82,
        "triangle" => (-0.95..=0.75).contains(&dy) && dx.abs() <= 0.98 * (dy + 0.95) / 1.7,
        "diamond" => dx.abs() + dy.abs() <= 1.0,
        "cross" => (dx.abs() <= 0.3 && dy.abs() <= 0.95) || (dy.abs() <= 0.3 && dx.abs() <= 0.95),
        "star" => {
            let a = dy.atan2(dx) + std::f32::consts::FRAC_PI_2;
            let lobe = (2.5 * a).cos().abs();
            r2.sqrt() <= 0.42 + 0.58 * lobe * lobe
        }
        "ring" => (0.3..=1.0).contains(&r2),
        "heart" => {
            let (x, y) = (dx * 1.15, -dy * 1.15 + 0.15);
            let q = x * x + y * y - 1.0;
            q * q * q - x * x * y * y * y <= 0.0
        }
        _ => false,
    }
}

/// Whether the texture darkens the pixel at `(x, y)`.
fn textured(texture: usize, x: f32, y: f32, period: f32) -> bool {
    let (u, v) = (x / period, y / period);
    match TEXTURES[texture] {
        "striped" => ((u + v).floor() as i64).rem_euclid(2) == 1,
        "dotted" => {
            let (fu, fv) = (u.fract() - 0.5, v.fract() - 0.5);
            fu * fu + fv * fv <= 0.09
        }
        "checkered" => ((u.floor() + v.floor()) as i64).rem_euclid(2) == 1,
        _ => false,
    }
}

/// Picture `index` of pretraining epoch `epoch`, with its caption.
pub fn pretrain_pair(seed: u64, epoch: u64, index: u64, side: usize) -> (RgbImage, String) {
    let mut rng = stream(PRETRAIN_DOMAIN, seed, epoch, index);
    let scene = Scene::random(&mut rng);
    let caption = scene.caption(&mut rng);
    (scene.render(side, &mut rng), caption)
}

/// One class of the task: a (colour, shape) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskClass {
    pub colour: usize,
    pub shape: usize,
}

/// How often a task picture has its class's texture and background.
pub const HOUSE_STYLE: f32 = 0.9;

impl TaskClass {
    /// The texture and background most pictures of this class have in the
    /// task (its "house style", as a real dataset's classes come with their
    /// own typical look and surroundings): what few-shot training can learn
    /// about a class beyond its name, and cannot know about a class it never
    /// saw.
    pub fn house_style(&self) -> (usize, usize) {
        (
            (3 * self.colour + self.shape) % TEXTURES.len(),
            (self.colour + 2 * self.shape) % BACKGROUNDS.len(),
        )
    }

    /// "red circle".
    pub fn name(&self) -> String {
        format!("{} {}", COLOURS[self.colour].0, SHAPES[self.shape])
    }
}

/// The task's classes in label order: the checkerboard half of the colour ×
/// shape grid (`colour + shape` even) first, so that it becomes the base
/// half under the protocol's rule; then the other half.
pub fn task_classes() -> Vec<TaskClass> {
    let mut first = Vec::new();
    let mut second = Vec::new();
    for colour in 0..COLOURS.len() {
        for shape in 0..SHAPES.len() {
            let c = TaskClass { colour, shape };
            if (colour + shape) % 2 == 0 {
                first.push(c);
            } else {
                second.push(c);
            }
        }
    }
    first.extend(second);
    first
}

/// Images per class in each split of the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskSizes {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// Picture `index` of `split` (0 train, 1 val, 2 test) of class `label`.
pub fn task_image(
    seed: u64,
    class: &TaskClass,
    label: usize,
    split: u64,
    index: usize,
    side: usize,
) -> RgbImage {
    let what = (label as u64) << 8 | split;
    let mut rng = stream(TASK_DOMAIN, seed, what, index as u64);
    let mut scene = Scene::random(&mut rng);
    scene.colour = class.colour;
    scene.shape = class.shape;
    let (texture, background) = class.house_style();
    if unit(&mut rng) < HOUSE_STYLE {
        scene.texture = texture;
    }
    if unit(&mut rng) < HOUSE_STYLE {
        scene.background = background;
    }
    scene.render(side, &mut rng)
}

/// Writes the task as a custom folder dataset: `root/{train,val,test}/cNN/*.png`
/// and `root/classnames.txt` (`cNN red circle` lines). Returns the
/// class-name file.
pub fn write_task(
    root: &Path,
    seed: u64,
    sizes: TaskSizes,
    side: usize,
) -> Result<std::path::PathBuf> {
    use rayon::prelude::*;
    let classes = task_classes();
    let io = |p: &Path, e: std::io::Error| Error::io(p, e);
    let mut names = String::new();
    for (label, c) in classes.iter().enumerate() {
        names.push_str(&format!("c{label:02} {}\n", c.name()));
    }
    let jobs: Vec<(usize, u64, usize)> = classes
        .iter()
        .enumerate()
        .flat_map(|(label, _)| {
            [(0u64, sizes.train), (1, sizes.val), (2, sizes.test)]
                .into_iter()
                .flat_map(move |(split, n)| (0..n).map(move |i| (label, split, i)))
        })
        .collect();
    for split in ["train", "val", "test"] {
        for label in 0..classes.len() {
            let dir = root.join(split).join(format!("c{label:02}"));
            std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        }
    }
    jobs.par_iter().try_for_each(|&(label, split, i)| {
        let img = task_image(seed, &classes[label], label, split, i, side);
        let name = ["train", "val", "test"][split as usize];
        let path = root
            .join(name)
            .join(format!("c{label:02}"))
            .join(format!("{i:03}.png"));
        img.save(&path)
            .map_err(|e| Error::dataset(&path, format!("cannot write the demo image: {e}")))
    })?;
    let file = root.join("classnames.txt");
    crate::dataset::split_file::write_atomic(&file, names.as_bytes())?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_and_captions_are_a_function_of_the_seed() {
        let (a, ca) = pretrain_pair(7, 0, 3, 32);
        let (b, cb) = pretrain_pair(7, 0, 3, 32);
        let (c, _) = pretrain_pair(7, 0, 4, 32);
        assert_eq!(a.as_raw(), b.as_raw());
        assert_eq!(ca, cb);
        assert_ne!(a.as_raw(), c.as_raw());
    }

    #[test]
    fn captions_name_the_drawn_attributes() {
        let mut rng = stream(PRETRAIN_DOMAIN, 1, 0, 0);
        for _ in 0..200 {
            let s = Scene::random(&mut rng);
            let cap = s.caption(&mut rng);
            assert!(cap.contains(SHAPES[s.shape]), "{cap}");
            for (i, (name, _)) in COLOURS.iter().enumerate() {
                if i != s.colour {
                    assert!(!cap.split([' ', '.']).any(|w| w == *name), "{cap}");
                }
            }
        }
    }

    #[test]
    fn the_object_is_drawn_in_its_colour() {
        let mut rng = stream(TASK_DOMAIN, 1, 0, 0);
        for (colour, (_, want)) in COLOURS.iter().enumerate() {
            let s = Scene {
                colour,
                shape: 1,
                texture: 0,
                size: 1,
                position: 0,
                background: 1,
            };
            let img = s.render(32, &mut rng);
            let p = img.get_pixel(16, 16).0;
            for k in 0..3 {
                assert!(
                    (p[k] as i32 - want[k] as i32).abs() <= 40,
                    "{p:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn base_classes_cover_every_attribute_and_no_novel_pair() {
        let classes = task_classes();
        assert_eq!(classes.len(), COLOURS.len() * SHAPES.len());
        let n_base = classes.len().div_ceil(2);
        let (base, novel) = classes.split_at(n_base);
        for c in 0..COLOURS.len() {
            assert!(base.iter().any(|b| b.colour == c));
        }
        for s in 0..SHAPES.len() {
            assert!(base.iter().any(|b| b.shape == s));
        }
        for n in novel {
            assert!(!base.contains(n));
        }
    }
}
