"""Model factory: ``create_model(name, num_classes, ...)`` over a registry of architectures.

Every model has the same face (:class:`~noisystudent.models.layers.Classifier`): ``forward_features``
(unpooled feature map), ``forward_head(x, pre_logits=False)``, ``forward``, ``reset_classifier`` and the
attributes ``num_features`` and ``num_classes``. Families: CIFAR-style ResNets (``resnet8`` ... ``resnet26``)
and Wide ResNets (``wrn_D_K``) for small images, torchvision's ResNet/EfficientNet/ConvNeXt for real ones.
Importing this package registers them all; torchvision's families by name only, their module (and torchvision)
imported when one is first built (:func:`~noisystudent.models._registry.register_lazy`).

Stage features, timm's face for feature distillation (FitNet, AT, FSP, STPM, ...): ``model.feature_info``
lists the stages (``num_chs``, ``reduction`` = stride vs the input, ``module`` = dotted name, ``index``),
and ``model.forward_intermediates(x, indices=None)`` returns ``(logits, [stage outputs])`` from one pass,
the logits exactly ``model(x)``. :func:`stage_info` gives the same per model name with each stage's
spatial size, without building real weights, for validating a config (equal-resolution pairs, stage
indices that exist). Which stages each family has is written in its module's docstring.
"""

from noisystudent.models import cifar_resnet, wide_resnet  # noqa: F401  (registration)
from noisystudent.models._registry import register_lazy

#: torchvision's families (noisystudent.models.torchvision_models), imported on first use
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
                      "convnext_tiny", "convnext_small")
register_lazy("noisystudent.models.torchvision_models", TORCHVISION_MODELS)
from noisystudent.models import one  # noqa: F401,E402  (ONE's multi-branch oneM_BASE family)
from noisystudent.models import signal_cnn  # noqa: F401,E402  (1-D CNNs over a signal modality)
from noisystudent.models._factory import create_model, model_num_params, stage_info, to_memory_format
from noisystudent.models._registry import is_model, list_families, list_models, register_family, register_model
from noisystudent.models.layers import Classifier, ClassifierHead, feature_take_indices

__all__ = [
    "Classifier",
    "ClassifierHead",
    "create_model",
    "feature_take_indices",
    "is_model",
    "list_families",
    "list_models",
    "model_num_params",
    "register_family",
    "register_model",
    "stage_info",
    "to_memory_format",
]
