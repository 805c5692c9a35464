//! Zero-shot CLIP: class prompts from a template, text features once per
//! class set, logits `exp(logit_scale) × cos(image, text)`.

use burn::prelude::*;
use burn::tensor::activation::softmax;
use mmrl_data::{ClipTokenizer, TokenBatch};
use mmrl_model::clip::Clip;
use mmrl_model::methods::{ClassPrompts, Method};

use crate::error::{Error, Result};
use mmrl_model::ClipBackend;

/// OpenAI's default prompt.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// The prompt for one class: `{}` in `template` replaced by the class name
/// with underscores turned into spaces (CoOp/Dassl convention).
pub fn prompt(template: &str, class: &str) -> String {
    mmrl_model::methods::fill_template(template, class)
}

/// Checks a template and a class list before any work is done.
pub fn check_classes(template: &str, classes: &[String]) -> Result<()> {
    if !template.contains("{}") {
        return Err(Error::Template(template.into()));
    }
    if classes.is_empty() {
        return Err(Error::NoClasses);
    }
    if let Some(empty) = classes.iter().position(|c| c.trim().is_empty()) {
        return Err(Error::EmptyClassName(empty + 1));
    }
    let mut seen = std::collections::HashSet::new();
    for c in classes {
        if !seen.insert(c.as_str()) {
            return Err(Error::DuplicateClass(c.clone()));
        }
    }
    Ok(())
}

/// Token ids and end positions as tensors.
///
/// # Shapes
/// - output: (`[rows, context]`, `[rows]`)
pub fn token_tensors<B: Backend>(
    batch: &TokenBatch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    let ids = Tensor::<B, 1, Int>::from_data(
        TensorData::new(batch.ids.clone(), [batch.ids.len()]),
        device,
    )
    .reshape([batch.rows, batch.context]);
    let eot = Tensor::from_data(TensorData::new(batch.eot.clone(), [batch.rows]), device);
    (ids, eot)
}

/// Checks a class list and template, and that the tokenizer fits `clip`.
fn check_prompt_inputs<C: Backend>(
    tokenizer: &ClipTokenizer,
    clip: &Clip<C>,
    classes: &[String],
    template: &str,
) -> Result<()> {
    check_classes(template, classes)?;
    let vocab = clip.text_model.embeddings.token_embedding.weight.dims()[0];
    if tokenizer.vocab_size() > vocab {
        return Err(Error::VocabMismatch {
            tokenizer: tokenizer.vocab_size(),
            model: vocab,
        });
    }
    Ok(())
}

/// The class prompts, tokenised and trimmed after the longest one's end
/// token, after checking the class list and that the tokenizer fits `clip`.
pub fn encode_prompts<B: ClipBackend>(
    tokenizer: &ClipTokenizer,
    clip: &Clip<B>,
    classes: &[String],
    template: &str,
) -> Result<TokenBatch> {
    check_prompt_inputs(tokenizer, clip, classes, template)?;
    let prompts: Vec<String> = classes.iter().map(|c| prompt(template, c)).collect();
    Ok(tokenizer.encode_batch(&prompts)?.trimmed())
}

/// A class set's prompts as method `M` writes them, tokenised (trimmed
/// after the longest end token), with each name's token count, after
/// checking the class list and that the tokenizer fits `clip`.
pub fn class_prompts<B: ClipBackend, M: Method<B>, C: Backend>(
    config: &M::Config,
    tokenizer: &ClipTokenizer,
    clip: &Clip<C>,
    classes: &[String],
    template: &str,
) -> Result<ClassPrompts> {
    check_prompt_inputs(tokenizer, clip, classes, template)?;
    let texts = M::prompt_texts(config, classes, template);
    let batch = tokenizer.encode_batch(&texts)?.trimmed();
    let name_lens = classes
        .iter()
        .map(|c| {
            Ok(tokenizer
                .encode(&c.replace('_', " "))?
                .len()
                .saturating_sub(2))
        })
        .collect::<Result<Vec<usize>>>()?;
    Ok(ClassPrompts {
        classes: classes.to_vec(),
        ids: batch.ids,
        seq: batch.context,
        eot: batch.eot,
        name_lens,
    })
}

/// Projected text features of the class prompts.
///
/// # Shapes
/// - output: `[classes, projection_dim]`
pub fn class_text_features<B: ClipBackend>(
    clip: &Clip<B>,
    tokenizer: &ClipTokenizer,
    classes: &[String],
    template: &str,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let batch = encode_prompts(tokenizer, clip, classes, template)?;
    let (ids, eot) = token_tensors::<B>(&batch, device);
    Ok(clip.encode_text(ids, eot))
}

/// Logits and probabilities of one batch of images.
pub struct ZeroShotOutput<B: Backend> {
    /// `[batch, classes]`
    pub logits: Tensor<B, 2>,
    /// `[batch, classes]`, softmax of `logits`.
    pub probs: Tensor<B, 2>,
}

/// Classifies preprocessed images against precomputed text features.
///
/// # Shapes
/// - `images`: `[batch, 3, size, size]`
/// - `text_features`: `[classes, projection_dim]`
pub fn classify<B: ClipBackend>(
    clip: &Clip<B>,
    images: Tensor<B, 4>,
    text_features: Tensor<B, 2>,
) -> ZeroShotOutput<B> {
    let logits = clip.logits(clip.encode_image(images), text_features);
    let probs = softmax(logits.clone(), 1);
    ZeroShotOutput { logits, probs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_replace_underscores() {
        assert_eq!(
            prompt("a photo of a {}.", "red_car"),
            "a photo of a red car."
        );
    }

    #[test]
    fn bad_class_lists_are_refused() {
        let t = DEFAULT_TEMPLATE;
        assert!(matches!(check_classes(t, &[]), Err(Error::NoClasses)));
        assert!(matches!(
            check_classes("a photo", &["cat".into()]),
            Err(Error::Template(_))
        ));
        assert!(matches!(
            check_classes(t, &["cat".into(), "cat".into()]),
            Err(Error::DuplicateClass(_))
        ));
        assert!(check_classes(t, &["cat".into(), "dog".into()]).is_ok());
    }
}
