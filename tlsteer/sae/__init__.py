"""Features of a dictionary for steering and for reading steering vectors (the ``sae`` extra: sae-lens).

``import tlsteer.sae`` needs sae-lens (``pip install "tlsteer[sae]"``). Every function that takes
a ``dictionary`` takes any sae-lens ``SAE`` (standard, top-k, JumpReLU, ...; tlsteer uses its
``encode``, ``decode``, ``W_dec``, ``cfg.d_in``, ``cfg.d_sae`` and the hook name in
``cfg.metadata.hook_name``, or ``hook_name=``) or any other
:class:`tlsteer.dictionary.FeatureDictionary` (a codebook, a transcoder): it is adapted once, at
the call, and used only through the protocol.

- Load and check: :func:`load_sae`, :func:`sae_hook_name`, :func:`sae_fingerprint`;
  :func:`as_feature_dictionary` (an SAE as a :class:`tlsteer.dictionary.FeatureDictionary`, what
  :func:`tlsteer.eval.feature_token_view` reads).
- Read: :func:`encode` (features at a position, the last token, or the mean over a span; for
  contrast data, a :class:`tlsteer.ContrastActivations` in feature space).
- Build: :func:`feature_vector` (``paired``, ``sums``, ``class_means``) giving a
  :class:`FeatureVector` (the same formulas on residuals: :func:`tlsteer.train_steering_vector`);
  :func:`encode_steering_vector` (the negative control).
- Steer: :func:`feature_edit` (a core edit), :func:`feature_steering` (a :class:`tlsteer.Steering`).
- Classes: :func:`class_profile` (K classes: distinctive and shared features, directions);
  :func:`distinctive_recognition` (how well the distinctive features recognise held-out examples).
- Select: :func:`feature_stats` (densities, first-token features), :func:`output_scores`.
- Look: :func:`inspect_feature`, :func:`plot_feature_vector`, :func:`sae_quality`.

SAEs trained for the embedded model load offline with :func:`load_embedded_sae` once they are built
(``benchmarks/sae_corpus.py`` and ``benchmarks/train_sae.py``); :func:`embedded_sae_layers` lists them.
Training an SAE is an API of its own, not re-exported here: :mod:`tlsteer.sae.corpus` (the corpus),
:mod:`tlsteer.sae.activation_cache` (activations cached on disk, streamed back) and
:mod:`tlsteer.sae.training` (TopK training with sae-lens, folding, saving, a check).
"""

from tlsteer.sae.adapter import as_feature_dictionary, load_sae, sae_hook_name
from tlsteer.sae.classes import SAEClassProfile, class_profile, distinctive_recognition
from tlsteer.sae.embedded import embedded_sae_layers, load_embedded_sae
from tlsteer.sae.encoding import encode
from tlsteer.sae.features import FeatureVector
from tlsteer.sae.formulas import encode_steering_vector, feature_vector
from tlsteer.sae.inspection import inspect_feature, plot_feature_vector
from tlsteer.sae.quality import sae_quality
from tlsteer.sae.selection import feature_stats, output_scores
from tlsteer.sae.steering import feature_edit, feature_steering

__all__ = [
    "FeatureVector",
    "SAEClassProfile",
    "as_feature_dictionary",
    "class_profile",
    "distinctive_recognition",
    "embedded_sae_layers",
    "encode",
    "encode_steering_vector",
    "feature_edit",
    "feature_stats",
    "feature_vector",
    "inspect_feature",
    "load_embedded_sae",
    "load_sae",
    "output_scores",
    "plot_feature_vector",
    "sae_hook_name",
    "sae_quality",
    "feature_steering",
]
