//! Writes CLIP as a Hugging Face folder (`config.json` + `model.safetensors`
//! with `CLIPModel`'s tensor names and layouts), so that what we train loads
//! like any published CLIP: here with [`load_clip`](super::loader::load_clip),
//! in Python with `CLIPModel.from_pretrained`.

use std::path::Path;

use burn::prelude::*;
use burn_store::ModuleSnapshot;

use super::config::ClipConfig;
use super::loader::{hf_source, transpose, Op};
use super::model::Clip;
use crate::error::{Error, Result};
use crate::methods::checkpoint::save_f32_safetensors;

/// Saves `model` (built from `config`) into the folder `dir`, each file
/// written atomically.
pub fn save_hf<B: Backend>(model: &Clip<B>, config: &ClipConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.into(),
        source,
    })?;
    let mut tensors = Vec::new();
    for snap in model.collect(None, None, false) {
        let name = snap.full_path();
        let data = snap.to_data().map_err(|e| Error::WeightsFormat {
            path: dir.into(),
            msg: format!("reading parameter {name}: {e:?}"),
        })?;
        let shape = data.shape.to_vec();
        let values: Vec<f32> =
            data.convert::<f32>()
                .to_vec()
                .map_err(|e| Error::WeightsFormat {
                    path: dir.into(),
                    msg: format!("reading parameter {name}: {e:?}"),
                })?;
        let source = hf_source(&name).expect("every parameter has a Hugging Face name");
        let (shape, values) = match source.op {
            Op::Transpose => (
                vec![shape[1], shape[0]],
                transpose(&values, shape[0], shape[1]),
            ),
            _ if name == "logit_scale" => (Vec::new(), values),
            _ => (shape, values),
        };
        tensors.push((source.key, shape, values));
    }
    save_f32_safetensors(&dir.join("model.safetensors"), tensors, None)?;
    let mut json = serde_json::to_value(config).expect("configs serialise");
    let obj = json.as_object_mut().expect("a config is an object");
    obj.insert("architectures".into(), serde_json::json!(["CLIPModel"]));
    obj.insert("model_type".into(), "clip".into());
    obj["text_config"]["model_type"] = "clip_text_model".into();
    obj["vision_config"]["model_type"] = "clip_vision_model".into();
    write_json(dir, "config.json", &json)?;
    // CLIP's preprocessing at the model's resolution, as `CLIPImageProcessor` writes it.
    let side = config.vision_config.image_size;
    let pre = serde_json::json!({
        "crop_size": {"height": side, "width": side},
        "do_center_crop": true,
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": side}
    });
    write_json(dir, "preprocessor_config.json", &pre)
}

fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("json serialises");
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|source| Error::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::loader::load_clip;

    type B = burn_flex::Flex;

    #[test]
    fn saved_folder_loads_back_identically() {
        let dir = std::env::temp_dir().join(format!("mmrl-save-hf-{}", std::process::id()));
        let config = ClipConfig::small(32, 1, 2, 16, 8);
        let device = Default::default();
        let model = config.init::<B>(&device);
        save_hf(&model, &config, &dir).unwrap();
        let loaded = load_clip::<B>(&dir, &device).unwrap();
        assert_eq!(loaded.config, config);
        let images = Tensor::<B, 4>::random(
            [2, 3, 16, 16],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let tokens = Tensor::<B, 2, Int>::from_ints([[49406, 320, 1929, 49407]], &device);
        let eot = Tensor::<B, 1, Int>::from_ints([3], &device);
        let same = |a: Tensor<B, 2>, b: Tensor<B, 2>| {
            a.into_data()
                .assert_approx_eq::<f32>(&b.into_data(), burn::tensor::Tolerance::absolute(0.0));
        };
        same(
            model.encode_image(images.clone()),
            loaded.model.encode_image(images),
        );
        same(
            model.encode_text(tokens.clone(), eot.clone()),
            loaded.model.encode_text(tokens, eot),
        );
        assert_eq!(
            model.logit_scale.val().into_data(),
            loaded.model.logit_scale.val().into_data()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
