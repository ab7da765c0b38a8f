"""Model factory: ``create_model(name, num_classes, ...)`` over a registry of architectures.

Every model has the same face (:class:`~noisystudent.models.layers.Classifier`): ``forward_features``
(unpooled feature map), ``forward_head(x, pre_logits=False)``, ``forward``, ``reset_classifier`` and the
attributes ``num_features`` and ``num_classes``. Families: CIFAR-style ResNets (``resnet8`` ... ``resnet26``)
and Wide ResNets (``wrn_D_K``) for small images, torchvision's ResNet/EfficientNet/ConvNeXt for real ones.
Importing this package registers them all.
"""

from noisystudent.models import cifar_resnet, torchvision_models, wide_resnet  # noqa: F401  (registration)
from noisystudent.models._factory import create_model, model_num_params
from noisystudent.models._registry import is_model, list_families, list_models, register_family, register_model
from noisystudent.models.layers import Classifier, ClassifierHead

__all__ = [
    "Classifier",
    "ClassifierHead",
    "create_model",
    "is_model",
    "list_families",
    "list_models",
    "model_num_params",
    "register_family",
    "register_model",
]
