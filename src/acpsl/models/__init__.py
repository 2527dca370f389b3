"""Split models: ``create(name, *, in_channels, num_classes, cut, stem)`` and ``names()``.

Every model is a :class:`SplitModel` whose ``client`` and ``server`` parts share the
parameters of ``full``. Importing this package registers the built-in models:
``resnet18`` (torchvision's, the ACP-SL setup), ``resnet20`` (He et al.'s CIFAR ResNet, the
RandTopk setup) and ``smallcnn`` (a small CNN for tests).
"""

from acpsl.models import resnet as _resnet  # noqa: F401  (registers "resnet18")
from acpsl.models import resnet_cifar as _resnet_cifar  # noqa: F401  (registers "resnet20")
from acpsl.models import smallcnn as _smallcnn  # noqa: F401  (registers "smallcnn")
from acpsl.models.registry import MODELS, as_split_model, create, names, register, resolve
from acpsl.models.split import SplitModel

__all__ = ["MODELS", "SplitModel", "as_split_model", "create", "names", "register", "resolve"]
