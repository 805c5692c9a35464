//! Loading CLIP weights from the files people have.
//!
//! This is the only file that knows other projects' tensor names. Sources:
//!
//! | layout | files | example keys |
//! |---|---|---|
//! | Hugging Face `CLIPModel` | folder with `config.json` + `model.safetensors` (or `pytorch_model.bin`), or a lone `.safetensors` | `vision_model.encoder.layers.0.self_attn.q_proj.weight` |
//! | OpenAI / open_clip | `.safetensors`, `.pt`, `.pth`, `.bin` state dicts | `visual.transformer.resblocks.0.attn.in_proj_weight` |
//!
//! Mapping to our (HF-named) modules, per parameter of the model:
//!
//! | ours | Hugging Face | OpenAI / open_clip |
//! |---|---|---|
//! | `text_model.embeddings.token_embedding.weight` | same | `token_embedding.weight` |
//! | `text_model.embeddings.position_embedding.weight` | same | `positional_embedding` |
//! | `{tower}.encoder.layers.N.self_attn.{q,k,v}_proj.weight` | same, transposed | rows `[0..w]`, `[w..2w]`, `[2w..3w]` of `…resblocks.N.attn.in_proj_weight`, transposed |
//! | `{tower}.encoder.layers.N.self_attn.{q,k,v}_proj.bias` | same | thirds of `…attn.in_proj_bias` |
//! | `{tower}.encoder.layers.N.self_attn.out_proj.*` | same (weight transposed) | `…attn.out_proj.*` (weight transposed) |
//! | `{tower}.encoder.layers.N.layer_norm{1,2}.{gamma,beta}` | `…layer_norm{1,2}.{weight,bias}` | `…ln_{1,2}.{weight,bias}` |
//! | `{tower}.encoder.layers.N.mlp.fc{1,2}.*` | same (weight transposed) | `…mlp.c_fc.*`, `…mlp.c_proj.*` (weight transposed) |
//! | `text_model.final_layer_norm.*` | same (`weight`/`bias`) | `ln_final.*` |
//! | `vision_model.embeddings.class_embedding` | same | `visual.class_embedding` |
//! | `vision_model.embeddings.patch_embedding.weight` | same | `visual.conv1.weight` |
//! | `vision_model.embeddings.position_embedding.weight` | same | `visual.positional_embedding` |
//! | `vision_model.{pre_layrnorm,post_layernorm}.*` | same (`weight`/`bias`) | `visual.ln_pre.*`, `visual.ln_post.*` |
//! | `visual_projection.weight` `[in, out]` | `visual_projection.weight` `[out, in]`, transposed | `visual.proj` `[in, out]`, as is |
//! | `text_projection.weight` `[in, out]` | `text_projection.weight`, transposed | `text_projection` `[in, out]`, as is |
//! | `logit_scale` `[1]` | `logit_scale` `[]` | `logit_scale` `[]` |
//!
//! `{tower}` is `text_model` (OpenAI: `transformer.resblocks`) or
//! `vision_model` (OpenAI: `visual.transformer.resblocks`). Every parameter
//! must be found with its shape, and every tensor in the file must be used,
//! except the buffers in [`IGNORED_KEYS`]; anything else is an error that
//! names the tensor and the file. Half and double precision are cast to f32.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::pytorch::PytorchReader;
use burn_store::{ModuleSnapshot, ModuleStore, SafetensorsStore, TensorSnapshot};

use super::config::{ClipConfig, ClipTextConfig, ClipVisionConfig};
use super::model::Clip;
use crate::error::{Error, Result};
use crate::ClipBackend;

/// Buffers some files carry that are not parameters.
pub const IGNORED_KEYS: &[&str] = &[
    "text_model.embeddings.position_ids",
    "vision_model.embeddings.position_ids",
    "input_resolution",
    "context_length",
    "vocab_size",
];

/// How a file names CLIP's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Hugging Face transformers `CLIPModel`.
    HuggingFace,
    /// OpenAI's `clip` package and open_clip.
    OpenAi,
}

/// A CLIP loaded from disk, with what was learnt about it on the way.
#[derive(Debug)]
pub struct LoadedClip<B: Backend> {
    pub model: Clip<B>,
    pub config: ClipConfig,
    pub layout: Layout,
    /// The weights file that was read.
    pub weights: PathBuf,
    /// `tokenizer.json` next to the weights, when the source is a Hugging Face folder.
    pub tokenizer: Option<PathBuf>,
}

/// Loads CLIP from a Hugging Face folder or a single weights file.
///
/// A folder must hold `model.safetensors` (or `pytorch_model.bin`); its
/// `config.json` is used when present. A lone file's architecture is
/// inferred from its tensor shapes, as OpenAI's `build_model` does.
pub fn load_clip<B: ClipBackend>(path: &Path, device: &B::Device) -> Result<LoadedClip<B>> {
    let (weights, config_json, tokenizer) = resolve(path)?;
    let tensors = read_tensors(&weights)?;
    let layout = detect_layout(&weights, &tensors)?;
    let config = match &config_json {
        Some(c) => ClipConfig::from_hf_json(c)?,
        None => infer_config(&weights, &tensors, layout)?,
    };
    let mut model = config.init::<B>(device);
    apply_tensors(&mut model, &weights, &tensors, layout)?;
    Ok(LoadedClip {
        model,
        config,
        layout,
        weights,
        tokenizer,
    })
}

/// Finds the weights file, `config.json` and `tokenizer.json` for `path`.
fn resolve(path: &Path) -> Result<(PathBuf, Option<PathBuf>, Option<PathBuf>)> {
    if !path.exists() {
        return Err(Error::BadPath {
            path: path.into(),
            msg: "no such file or folder; pass a Hugging Face CLIP folder (config.json + \
                  model.safetensors) or a .safetensors/.pt weights file"
                .into(),
        });
    }
    if path.is_file() {
        return Ok((path.to_path_buf(), None, None));
    }
    let weights = ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|f| path.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::BadPath {
            path: path.into(),
            msg: "folder has neither model.safetensors nor pytorch_model.bin; a Hugging Face \
                  CLIP folder (e.g. openai/clip-vit-base-patch16) has both config.json and \
                  model.safetensors"
                .into(),
        })?;
    let config = Some(path.join("config.json")).filter(|p| p.is_file());
    let tokenizer = Some(path.join("tokenizer.json")).filter(|p| p.is_file());
    Ok((weights, config, tokenizer))
}

/// Reads every tensor of a safetensors or PyTorch file, lazily, by name.
/// Common wrappers (`state_dict.`, `module.`) are stripped from the names.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>> {
    let bad = |msg: String| Error::WeightsFormat {
        path: path.into(),
        msg,
    };
    let mut magic = [0u8; 9];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
    let is_zip = n >= 4 && magic[..4] == *b"PK\x03\x04";
    // safetensors: an 8-byte little-endian header length, then the JSON header.
    let is_safetensors = n == 9 && magic[8] == b'{';
    let is_legacy_pickle = n >= 2 && magic[0] == 0x80 && !is_safetensors;
    let tensors: BTreeMap<String, TensorSnapshot> = if is_zip || is_legacy_pickle {
        if is_zip && is_torchscript(path) {
            return Err(bad(
                TORCHSCRIPT_HINT.replace("{file}", &path.display().to_string())
            ));
        }
        // Lengths the unpicklers would allocate before reading are checked
        // first: a corrupt file must not make them ask for gigabytes.
        super::pickle_scan::check_file(path)
            .map_err(|e| bad(format!("not a readable PyTorch file ({e})")))?;
        // Checkpoints that pickle optimizer or scheduler objects next to the
        // weights (Dassl's) can fail burn-store's reader, or pass it with no
        // tensor found: read those with candle's lenient unpickler.
        let strict = PytorchReader::new(path)
            .map(|r| r.into_tensors().into_iter().collect::<BTreeMap<_, _>>());
        match strict {
            Ok(t) if !t.is_empty() => t,
            Ok(_) => read_pickle_lenient(path)
                .map_err(|e2| bad(format!("not a readable PyTorch state dict ({e2})")))?,
            Err(e) => read_pickle_lenient(path)
                .map_err(|e2| bad(format!("not a readable PyTorch state dict ({e}; {e2})")))?,
        }
    } else {
        let mut store = SafetensorsStore::from_file(path);
        store
            .get_all_snapshots()
            .map_err(|e| {
                bad(format!(
                    "not a valid .safetensors file ({e}); is it truncated? Re-download or \
                     re-export it"
                ))
            })?
            .clone()
    };
    if tensors.is_empty() {
        return Err(bad("the file holds no tensors".into()));
    }
    Ok(strip_wrappers(tensors))
}

/// Every tensor of a PyTorch file, under `state_dict` when the file has one,
/// whatever other Python objects it pickles. Reads eagerly, casting to f32.
/// Strided tensors (views such as Dassl's `token_prefix = embedding[:, :1]`,
/// saved with the whole storage) are gathered from their storage.
fn read_pickle_lenient(
    path: &Path,
) -> std::result::Result<BTreeMap<String, TensorSnapshot>, String> {
    use candle_core::pickle::PthTensors;
    let pth = PthTensors::new(path, Some("state_dict"))
        .ok()
        .filter(|p| !p.tensor_infos().is_empty())
        .map(Ok)
        .unwrap_or_else(|| PthTensors::new(path, None))
        .map_err(|e| e.to_string())?;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    pth.tensor_infos()
        .iter()
        .map(|(name, info)| {
            let values =
                read_strided(&mut zip, info).map_err(|e| format!("tensor `{name}`: {e}"))?;
            let shape = info.layout.dims().to_vec();
            let snapshot = TensorSnapshot::from_data(
                TensorData::new(values, shape),
                name.split('.').map(String::from).collect(),
                Vec::new(),
                ParamId::new(),
            );
            Ok((name.clone(), snapshot))
        })
        .collect()
}

/// One tensor of a PyTorch zip file as f32, read through its layout (strides
/// in elements, offset in bytes as candle keeps it) from its storage record. Reads no more than the
/// elements the layout reaches, and fails if the record is shorter.
fn read_strided<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    info: &candle_core::pickle::TensorInfo,
) -> std::result::Result<Vec<f32>, String> {
    use candle_core::DType as D;
    use std::io::Read;
    let dims = info.layout.dims();
    let strides = info.layout.stride();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("its shape overflows")?;
    let elem = match info.dtype {
        D::F32 => 4,
        D::F16 | D::BF16 => 2,
        D::F64 => 8,
        other => return Err(format!("dtype {other:?} is not a float type")),
    };
    // candle keeps the storage offset in bytes.
    let start = info.layout.start_offset() / elem;
    // The furthest element the layout reaches, +1.
    let span = if count == 0 {
        0
    } else {
        dims.iter()
            .zip(strides)
            .try_fold(start + 1, |acc, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
            })
            .ok_or("its layout overflows")?
    };
    let bytes_needed = span.checked_mul(elem).ok_or("its layout overflows")?;
    let mut entry = zip.by_name(&info.path).map_err(|e| e.to_string())?;
    // A view may repeat elements (stride 0), but not claim more than a
    // generous multiple of its storage: no allocation of what a header says.
    let stored = entry.size() / elem as u64;
    if count as u64 > 64 * stored + 4096 {
        return Err(format!(
            "its shape claims {count} elements from a storage of {stored}: the file is corrupt"
        ));
    }
    let mut bytes = Vec::new();
    entry
        .by_ref()
        .take(bytes_needed as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() < bytes_needed {
        return Err(format!(
            "its storage holds {} bytes, its layout needs {bytes_needed} (truncated file?)",
            bytes.len()
        ));
    }
    let at = |i: usize| -> f32 {
        let b = &bytes[i * elem..(i + 1) * elem];
        match info.dtype {
            D::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            D::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            D::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            _ => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        }
    };
    let mut out = Vec::with_capacity(count);
    let mut index = vec![0usize; dims.len()];
    for _ in 0..count {
        let offset = start + index.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
        out.push(at(offset));
        // the next index, last dimension fastest
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            if index[d] < dims[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

const TORCHSCRIPT_HINT: &str = "{file} is a TorchScript archive (OpenAI's release format), \
which holds code as well as weights and cannot be read without Python. Convert it once to \
a state dict: python -c \"import torch; from safetensors.torch import save_file; \
m = torch.jit.load('{file}', map_location='cpu'); \
save_file({k: v.float().contiguous() for k, v in m.state_dict().items()}, 'clip.safetensors')\" \
and pass clip.safetensors";

/// TorchScript archives carry `constants.pkl` and a `code/` folder.
fn is_torchscript(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let needle = b"constants.pkl";
    bytes.windows(needle.len()).any(|w| w == needle)
}

fn strip_wrappers(
    mut tensors: BTreeMap<String, TensorSnapshot>,
) -> BTreeMap<String, TensorSnapshot> {
    for prefix in ["state_dict.", "module.", "model."] {
        if tensors.keys().all(|k| k.starts_with(prefix)) {
            tensors = tensors
                .into_iter()
                .map(|(k, v)| (k[prefix.len()..].to_string(), v))
                .collect();
        }
    }
    tensors
}

/// Tells the layout from the names.
pub fn detect_layout(path: &Path, tensors: &BTreeMap<String, TensorSnapshot>) -> Result<Layout> {
    let has = |prefix: &str| tensors.keys().any(|k| k.starts_with(prefix));
    if has("vision_model.") && has("text_model.") {
        Ok(Layout::HuggingFace)
    } else if has("visual.transformer.") && has("transformer.resblocks.") {
        Ok(Layout::OpenAi)
    } else if has("visual.layer1") || has("visual.attnpool") {
        Err(Error::UnknownLayout {
            path: path.into(),
            msg: "this is a ResNet CLIP (RN50/RN101/...); only ViT CLIPs are supported".into(),
        })
    } else {
        let sample: Vec<&str> = tensors.keys().take(5).map(String::as_str).collect();
        Err(Error::UnknownLayout {
            path: path.into(),
            msg: format!(
                "expected Hugging Face names (vision_model.*, text_model.*) or OpenAI/open_clip \
                 names (visual.transformer.*, transformer.resblocks.*); found {sample:?}..."
            ),
        })
    }
}

fn shape_of(
    path: &Path,
    tensors: &BTreeMap<String, TensorSnapshot>,
    key: &str,
    rank: usize,
) -> Result<Vec<usize>> {
    let t = tensors.get(key).ok_or_else(|| Error::MissingTensor {
        path: path.into(),
        key: key.into(),
        param: "architecture inference".into(),
        hint: String::new(),
    })?;
    let shape = t.shape.to_vec();
    if shape.len() != rank {
        return Err(Error::ShapeMismatch {
            path: path.into(),
            key: key.into(),
            param: "architecture inference".into(),
            expected: vec![0; rank],
            found: shape,
        });
    }
    Ok(shape)
}

/// Number of blocks `prefix{N}.` present.
fn count_layers(tensors: &BTreeMap<String, TensorSnapshot>, prefix: &str) -> usize {
    tensors
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .map(|n| n + 1)
        .max()
        .unwrap_or(0)
}

/// Architecture from tensor shapes, as OpenAI's `clip.model.build_model`
/// does: widths, depths, patch, image and context sizes from the shapes;
/// heads = width / 64 in both towers.
pub fn infer_config(
    path: &Path,
    tensors: &BTreeMap<String, TensorSnapshot>,
    layout: Layout,
) -> Result<ClipConfig> {
    let s = |key: &str, rank| shape_of(path, tensors, key, rank);
    let (tok, pos, ln_final, fc1_t, conv, vpos, fc1_v, vproj, text_prefix, vision_prefix);
    match layout {
        Layout::HuggingFace => {
            tok = s("text_model.embeddings.token_embedding.weight", 2)?;
            pos = s("text_model.embeddings.position_embedding.weight", 2)?;
            ln_final = s("text_model.final_layer_norm.weight", 1)?;
            // HF linear weights are [out, in].
            fc1_t = s("text_model.encoder.layers.0.mlp.fc1.weight", 2)?[0];
            conv = s("vision_model.embeddings.patch_embedding.weight", 4)?;
            vpos = s("vision_model.embeddings.position_embedding.weight", 2)?;
            fc1_v = s("vision_model.encoder.layers.0.mlp.fc1.weight", 2)?[0];
            vproj = s("visual_projection.weight", 2)?[0];
            text_prefix = "text_model.encoder.layers.";
            vision_prefix = "vision_model.encoder.layers.";
        }
        Layout::OpenAi => {
            tok = s("token_embedding.weight", 2)?;
            pos = s("positional_embedding", 2)?;
            ln_final = s("ln_final.weight", 1)?;
            fc1_t = s("transformer.resblocks.0.mlp.c_fc.weight", 2)?[0];
            conv = s("visual.conv1.weight", 4)?;
            vpos = s("visual.positional_embedding", 2)?;
            fc1_v = s("visual.transformer.resblocks.0.mlp.c_fc.weight", 2)?[0];
            // OpenAI's proj is [in, out].
            vproj = s("visual.proj", 2)?[1];
            text_prefix = "transformer.resblocks.";
            vision_prefix = "visual.transformer.resblocks.";
        }
    }
    let text_width = ln_final[0];
    let vision_width = conv[0];
    let patch = conv[3];
    let grid = ((vpos[0].saturating_sub(1)) as f64).sqrt().round() as usize;
    let config = ClipConfig {
        text_config: ClipTextConfig {
            vocab_size: tok[0],
            hidden_size: text_width,
            intermediate_size: fc1_t,
            num_hidden_layers: count_layers(tensors, text_prefix),
            num_attention_heads: (text_width / 64).max(1),
            max_position_embeddings: pos[0],
            ..ClipTextConfig::default()
        },
        vision_config: ClipVisionConfig {
            hidden_size: vision_width,
            intermediate_size: fc1_v,
            num_hidden_layers: count_layers(tensors, vision_prefix),
            num_attention_heads: (vision_width / 64).max(1),
            image_size: grid * patch,
            patch_size: patch,
            num_channels: conv[1],
            ..ClipVisionConfig::default()
        },
        projection_dim: vproj,
        ..ClipConfig::default()
    };
    config.validate().map_err(|msg| Error::InvalidConfig {
        path: path.into(),
        msg: format!("inferred from tensor shapes: {msg}"),
    })?;
    Ok(config)
}

/// How a parameter is made from a file tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Used as stored.
    Identity,
    /// `[out, in]` → `[in, out]`.
    Transpose,
    /// Third `index` of a packed `[3·w, …]` tensor along dim 0, transposed if rank 2.
    Third { index: usize },
}

/// Where a parameter comes from: the file key and the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub key: String,
    pub op: Op,
}

fn src(key: impl Into<String>, op: Op) -> Source {
    Source {
        key: key.into(),
        op,
    }
}

/// Norm parameters are `gamma`/`beta` in Burn, `weight`/`bias` elsewhere.
fn norm_name(param: &str) -> Option<&'static str> {
    match param {
        "gamma" => Some("weight"),
        "beta" => Some("bias"),
        _ => None,
    }
}

/// The source of one of our parameters in a Hugging Face file.
pub fn hf_source(param: &str) -> Option<Source> {
    let (module, leaf) = param.rsplit_once('.').unwrap_or(("", param));
    if let Some(norm) = norm_name(leaf) {
        return Some(src(format!("{module}.{norm}"), Op::Identity));
    }
    let linear = module.ends_with("_proj")
        || module.ends_with(".fc1")
        || module.ends_with(".fc2")
        || module == "visual_projection"
        || module == "text_projection";
    if linear && leaf == "weight" {
        return Some(src(param, Op::Transpose));
    }
    Some(src(param, Op::Identity))
}

/// The source of one of our parameters in an OpenAI / open_clip file.
pub fn openai_source(param: &str) -> Option<Source> {
    let fixed = match param {
        "text_model.embeddings.token_embedding.weight" => Some("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight" => Some("positional_embedding"),
        "text_model.final_layer_norm.gamma" => Some("ln_final.weight"),
        "text_model.final_layer_norm.beta" => Some("ln_final.bias"),
        "vision_model.embeddings.class_embedding" => Some("visual.class_embedding"),
        "vision_model.embeddings.patch_embedding.weight" => Some("visual.conv1.weight"),
        "vision_model.embeddings.position_embedding.weight" => Some("visual.positional_embedding"),
        "vision_model.pre_layrnorm.gamma" => Some("visual.ln_pre.weight"),
        "vision_model.pre_layrnorm.beta" => Some("visual.ln_pre.bias"),
        "vision_model.post_layernorm.gamma" => Some("visual.ln_post.weight"),
        "vision_model.post_layernorm.beta" => Some("visual.ln_post.bias"),
        "visual_projection.weight" => Some("visual.proj"),
        "text_projection.weight" => Some("text_projection"),
        "logit_scale" => Some("logit_scale"),
        _ => None,
    };
    if let Some(key) = fixed {
        return Some(src(key, Op::Identity));
    }
    let (tower, rest) = if let Some(r) = param.strip_prefix("text_model.encoder.layers.") {
        ("transformer.resblocks.", r)
    } else if let Some(r) = param.strip_prefix("vision_model.encoder.layers.") {
        ("visual.transformer.resblocks.", r)
    } else {
        return None;
    };
    let (n, rest) = rest.split_once('.')?;
    let block = format!("{tower}{n}.");
    let (module, leaf) = rest.rsplit_once('.')?;
    let third = |index| {
        let packed = if leaf == "weight" {
            "attn.in_proj_weight"
        } else {
            "attn.in_proj_bias"
        };
        Some(src(format!("{block}{packed}"), Op::Third { index }))
    };
    let linear = |name: &str| {
        let op = if leaf == "weight" {
            Op::Transpose
        } else {
            Op::Identity
        };
        Some(src(format!("{block}{name}.{leaf}"), op))
    };
    let norm = |name: &str| {
        Some(src(
            format!("{block}{name}.{}", norm_name(leaf)?),
            Op::Identity,
        ))
    };
    match module {
        "self_attn.q_proj" => third(0),
        "self_attn.k_proj" => third(1),
        "self_attn.v_proj" => third(2),
        "self_attn.out_proj" => linear("attn.out_proj"),
        "mlp.fc1" => linear("mlp.c_fc"),
        "mlp.fc2" => linear("mlp.c_proj"),
        "layer_norm1" => norm("ln_1"),
        "layer_norm2" => norm("ln_2"),
        _ => None,
    }
}

/// The file tensor, cast to f32, in the parameter's layout.
pub(crate) fn convert(
    path: &Path,
    key: &str,
    snap: &TensorSnapshot,
    op: &Op,
) -> Result<(Vec<f32>, Vec<usize>)> {
    let data = snap.to_data().map_err(|e| Error::WeightsFormat {
        path: path.into(),
        msg: format!("cannot read tensor `{key}`: {e:?}"),
    })?;
    let dtype = data.dtype;
    let data = match dtype {
        DType::F32 => data,
        DType::F16 | DType::BF16 | DType::F64 => data.convert_dtype(DType::F32),
        other => {
            return Err(Error::DType {
                path: path.into(),
                key: key.into(),
                dtype: format!("{other:?}"),
            })
        }
    };
    let shape = data.shape.to_vec();
    let values: Vec<f32> = data.to_vec().map_err(|e| Error::WeightsFormat {
        path: path.into(),
        msg: format!("tensor `{key}`: {e:?}"),
    })?;
    match op {
        Op::Identity => Ok((values, shape)),
        Op::Transpose => match shape[..] {
            [rows, cols] => Ok((transpose(&values, rows, cols), vec![cols, rows])),
            _ => Ok((values, shape)),
        },
        Op::Third { index } => {
            let rows = shape.first().copied().unwrap_or(0);
            if rows % 3 != 0 {
                return Err(Error::ShapeMismatch {
                    path: path.into(),
                    key: key.into(),
                    param: "packed q/k/v".into(),
                    expected: vec![3 * (rows / 3)],
                    found: shape,
                });
            }
            let third = rows / 3;
            let row_len: usize = shape[1..].iter().product();
            let part = values[index * third * row_len..(index + 1) * third * row_len].to_vec();
            match shape[..] {
                [_, cols] => Ok((transpose(&part, third, cols), vec![cols, third])),
                _ => Ok((part, vec![third])),
            }
        }
    }
}

pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Loads `tensors` into `model`, checking that every parameter is found with
/// its shape and that every tensor is used.
pub fn apply_tensors<B: ClipBackend>(
    model: &mut Clip<B>,
    path: &Path,
    tensors: &BTreeMap<String, TensorSnapshot>,
    layout: Layout,
) -> Result<()> {
    let params = model.collect(None, None, false);
    let mut used = BTreeSet::new();
    let mut snapshots = Vec::with_capacity(params.len());
    for param in &params {
        let name = param.full_path();
        let expected = param.shape.to_vec();
        let source = match layout {
            Layout::HuggingFace => hf_source(&name),
            Layout::OpenAi => openai_source(&name),
        }
        .ok_or_else(|| Error::UnknownLayout {
            path: path.into(),
            msg: format!("no source known for parameter `{name}`"),
        })?;
        let snap = tensors
            .get(&source.key)
            .ok_or_else(|| Error::MissingTensor {
                path: path.into(),
                key: source.key.clone(),
                param: name.clone(),
                hint: "; the file is incomplete or belongs to another architecture".into(),
            })?;
        used.insert(source.key.clone());
        let (values, mut shape) = convert(path, &source.key, snap, &source.op)?;
        // Rank-0 scalars (logit_scale) fill a [1] parameter.
        if shape.is_empty() && expected == [1] {
            shape = vec![1];
        }
        if shape != expected {
            return Err(Error::ShapeMismatch {
                path: path.into(),
                key: source.key.clone(),
                param: name,
                expected,
                found: snap.shape.to_vec(),
            });
        }
        let path_stack: Vec<String> = name.split('.').map(String::from).collect();
        snapshots.push(TensorSnapshot::from_data(
            TensorData::new(values, shape),
            path_stack,
            Vec::new(),
            ParamId::new(),
        ));
    }
    let unused: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|k| !used.contains(*k) && !IGNORED_KEYS.contains(k))
        .collect();
    if !unused.is_empty() {
        let shown: Vec<&str> = unused.iter().take(8).copied().collect();
        let more = if unused.len() > shown.len() {
            format!(" and {} more", unused.len() - shown.len())
        } else {
            String::new()
        };
        return Err(Error::UnexpectedTensors {
            path: path.into(),
            keys: format!("{shown:?}{more}"),
        });
    }
    let result = model.apply(snapshots, None, None, false);
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(Error::WeightsFormat {
            path: path.into(),
            msg: format!(
                "applying the weights failed: errors {:?}, missing {:?}",
                result.errors, result.missing
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn openai_packed_qkv_maps_to_thirds() {
        assert_eq!(
            openai_source("vision_model.encoder.layers.3.self_attn.k_proj.weight"),
            Some(src(
                "visual.transformer.resblocks.3.attn.in_proj_weight",
                Op::Third { index: 1 }
            ))
        );
        assert_eq!(
            openai_source("text_model.encoder.layers.0.self_attn.v_proj.bias"),
            Some(src(
                "transformer.resblocks.0.attn.in_proj_bias",
                Op::Third { index: 2 }
            ))
        );
        assert_eq!(
            openai_source("text_model.encoder.layers.11.layer_norm2.beta"),
            Some(src("transformer.resblocks.11.ln_2.bias", Op::Identity))
        );
    }

    #[test]
    fn openai_projections_are_not_transposed_hf_ones_are() {
        assert_eq!(
            openai_source("visual_projection.weight"),
            Some(src("visual.proj", Op::Identity))
        );
        assert_eq!(
            hf_source("visual_projection.weight"),
            Some(src("visual_projection.weight", Op::Transpose))
        );
        assert_eq!(
            hf_source("text_model.encoder.layers.0.mlp.fc1.weight"),
            Some(src(
                "text_model.encoder.layers.0.mlp.fc1.weight",
                Op::Transpose
            ))
        );
        assert_eq!(
            hf_source("vision_model.pre_layrnorm.gamma"),
            Some(src("vision_model.pre_layrnorm.weight", Op::Identity))
        );
        assert_eq!(
            hf_source("vision_model.embeddings.patch_embedding.weight"),
            Some(src(
                "vision_model.embeddings.patch_embedding.weight",
                Op::Identity
            ))
        );
    }

    #[test]
    fn thirds_split_rows_then_transpose() {
        // in_proj [3·2, 2] rows: q = [[0,1],[2,3]], k = [[4,5],[6,7]], v = [[8,9],[10,11]]
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let snap = TensorSnapshot::from_data(
            TensorData::new(values, [6, 2]),
            vec!["w".into()],
            vec![],
            ParamId::new(),
        );
        let (k, shape) = convert(Path::new("x"), "w", &snap, &Op::Third { index: 1 }).unwrap();
        assert_eq!(shape, vec![2, 2]);
        // k^T = [[4,6],[5,7]]
        assert_eq!(k, vec![4.0, 6.0, 5.0, 7.0]);
    }
}
