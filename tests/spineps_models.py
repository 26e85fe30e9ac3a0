"""Build SPINEPS model folders with hand-set weights, in SPINEPS's own on-disk formats.

The real weights are ~1 GB behind a download; tests need folders that SPINEPS loads through
exactly the code paths the released ones take (nnU-Net v2 result folder, Lightning checkpoints,
`inference_config.json`) and that run fast on a 2-core CPU. Fully random weights make the
semantic net emit noise whose clean-up dominates the run, so the nets are "designed" instead:
almost every weight is zero and the few that are not turn them into simple, deterministic rules:

* semantic (nnU-Net PlainConvUNet, 2 stages, 4 features, no normalisation): a threshold on the
  z-scored intensity z: z < 1 -> background, 1 <= z < 3 -> vertebral body (TPTBox label 49),
  z >= 3 -> disc (100). `sagittal_phantom` paints an image that yields separate bodies.
* instance (SPINEPS `architectures_new.pl_unet.PLNet`, 3D U-Net, 8 features): every body voxel
  inside a cutout -> "this vertebra" (class 2). The cutout is kept smaller than the spacing of
  two bodies, so each cutout holds one body and every body becomes one instance.
* labeling (`architectures.pl_densenet.PLClassifier`, MONAI ResNet-10 backbone on a 32x32x16
  patch): random weights; its labels are arbitrary but the labeling step runs for real.

Sizes (ModelSet). SMALL (the above) is what the tests use; CPU and TINY are the small networks at
the real semantic model's resolution and patch (TINY: at 3 mm) with REAL's absolute thresholds,
for benchmarks/gpu.py's CPU figures and its CPU check. REAL has the released models' architecture
and size, for benchmarks/gpu.py: compute cost depends on the architecture, not on the weight
values, so designed weights of real size give real timings and still real structures downstream:

* semantic: nnU-Net v2 3d_fullres PlainConvUNet as nnU-Net's planner makes it for a patch of
  32 x 224 x 192 voxels at 3.3 x 0.86 x 0.86 mm (nnU-Net's axes R, I, P): 6 stages, 32 to 320
  features, in-plane-only pooling and 1x3x3 kernels until the spacing is isotropic enough, 17 outputs (background and the
  16 labels of CONTEXT.md section 3). AN ASSUMPTION: the released plans (T2w_semantic_v1.0.9) are
  not available offline. Two departures keep the designed rule absolute: the instance norms use
  stored statistics (`track_running_stats`; same class, parameters and per-voxel cost, but no
  per-tile re-scaling) and the plans use nnU-Net's CT normalisation with fixed statistics
  instead of a per-image z-score, so the thresholds are intensities after SPINEPS's own
  [0, 1500] rescaling: canal/soft tissue below 450, bodies 450-1240, discs above (batchseg's
  synthetic phantoms, synth.INTENSITY_T2, land there).
* instance: SPINEPS's `architectures_new` Unet3D with the constructor's defaults (dim 8, 11
  one-hot input channels; the released width is not known offline: an assumption) and SPINEPS's
  default cutout of 248 x 304 x 64 voxels. The designed rule ("every body voxel in the cutout is
  this vertebra") needs a cutout that holds one body, so the model's resolution is anisotropic
  (2 x 0.09 x 3.3 mm: the cutout spans 27 mm along I): the network's input and cost are the
  released ones, the resampled grid around it is not (its CPU cost is an estimate).
* labeling: MONAI DenseNet-169 (SPINEPS's default backbone) on SPINEPS's default classifier
  input of 152 x 168 x 32 voxels, random weights.

Only test and benchmark code imports this module; the folder builders need torch,
pytorch-lightning, nnunetv2 and spineps; `bare_networks` needs only torch,
dynamic-network-architectures, monai and SPINEPS's unet3D.py (loaded by path, without importing
the spineps package and its SimpleITK/ANTs dependencies).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEMANTIC_NAME = "T2w_semantic_v1.0.9"
INSTANCE_NAME = "instance_sagittal_v1.2.0"
LABELING_NAME = "T2w_labeling_v1.4.0"

# (P, I, R) voxel size in mm the nets work at; the largest > 1.2 mm keeps SPINEPS from calling
# its VIBESeg auto-crop (a separate download) on large inputs.
SEMANTIC_ZOOM = [1.0, 1.0, 3.0]
INSTANCE_ZOOM = [1.0, 1.0, 3.0]
# Cutout (P, I, R) in voxels at INSTANCE_ZOOM: multiples of 8 (the U-Net downsamples 3 times),
# and shorter along I than two bodies' spacing in `sagittal_phantom` (see there).
INSTANCE_CUTOUT = [48, 24, 16]

# The semantic model's output labels beyond background, in TPTBox's names ("26": the sacrum).
REAL_SEMANTIC_LABELS = (
    "Arcus_Vertebrae", "Spinosus_Process", "Costal_Process_Left", "Costal_Process_Right",
    "Superior_Articular_Left", "Superior_Articular_Right", "Inferior_Articular_Left",
    "Inferior_Articular_Right", "Vertebra_Corpus_border", "Vertebral_Body_Endplate_Superior",
    "Vertebral_Body_Endplate_Inferior", "Spinal_Cord", "Spinal_Canal", "Endplate", "Vertebra_Disc", "26",
)


@dataclass(frozen=True)
class ModelSet:
    """Everything about the three model folders that depends on their size."""

    name: str
    semantic_features: tuple[int, ...]
    # nnU-Net's axes are (R, I, P): TPTBox hands it the (P, I, R) image transposed, with the
    # spacing reversed; kernels, strides and patch are in that order, zooms in SPINEPS's (P, I, R)
    semantic_kernels: tuple[tuple[int, int, int], ...]
    semantic_strides: tuple[tuple[int, int, int], ...]
    semantic_convs: int                       # convolutions per stage, encoder and decoder
    semantic_norm: bool                       # instance norms (with stored statistics) or none
    semantic_patch: tuple[int, int, int]      # (R, I, P), nnU-Net's order
    semantic_zoom: tuple[float, float, float]  # (P, I, R) mm, SPINEPS's order
    semantic_labels: tuple[str, ...]          # output labels after background
    semantic_normalization: str               # nnU-Net scheme: ZScoreNormalization | CTNormalization
    # rule, in the net's input units: body from the first threshold on, disc from the second
    semantic_thresholds: tuple[float, float]
    instance_dim: int
    instance_cutout: tuple[int, int, int]
    instance_zoom: tuple[float, float, float]
    labeling_backbone: str
    labeling_input: tuple[int, int, int]

    def semantic_arch(self, designed: bool = True) -> dict:
        """nnU-Net's `architecture` entry of plans.json. designed=False: per-tile norm statistics (the default)."""
        n = len(self.semantic_features)
        norm = "torch.nn.modules.instancenorm.InstanceNorm3d" if self.semantic_norm else None
        norm_kwargs = {"eps": 1e-5, "affine": True, "track_running_stats": designed} if self.semantic_norm else None
        return {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n,
                "features_per_stage": list(self.semantic_features),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [list(k) for k in self.semantic_kernels],
                "strides": [list(k) for k in self.semantic_strides],
                "n_conv_per_stage": [self.semantic_convs] * n,
                "n_conv_per_stage_decoder": [self.semantic_convs] * (n - 1),
                "conv_bias": True,
                "norm_op": norm,
                "norm_op_kwargs": norm_kwargs,
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        }


SMALL = ModelSet(
    name="small", semantic_features=(4, 4), semantic_kernels=((3, 3, 3), (3, 3, 3)),
    semantic_strides=((1, 1, 1), (2, 2, 2)), semantic_convs=1,
    # no normalisation layer: an instance norm would re-scale every sliding-window tile on its
    # own and the intensity threshold would move from tile to tile
    semantic_norm=False, semantic_patch=(16, 128, 128), semantic_zoom=tuple(SEMANTIC_ZOOM),
    semantic_labels=("Vertebra_Corpus_border", "Vertebra_Disc"), semantic_normalization="ZScoreNormalization",
    semantic_thresholds=(1.0, 3.0),
    instance_dim=8, instance_cutout=tuple(INSTANCE_CUTOUT), instance_zoom=tuple(INSTANCE_ZOOM),
    labeling_backbone="RESNET10", labeling_input=(32, 32, 16),
)

REAL = ModelSet(
    name="real", semantic_features=(32, 64, 128, 256, 320, 320),
    semantic_kernels=((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
    semantic_strides=((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)), semantic_convs=2,
    semantic_norm=True, semantic_patch=(32, 224, 192), semantic_zoom=(0.8571, 0.8571, 3.3),
    semantic_labels=REAL_SEMANTIC_LABELS, semantic_normalization="CTNormalization",
    semantic_thresholds=(4.5, 12.4),          # x 100 = intensity after SPINEPS's [0, 1500] rescaling
    instance_dim=8, instance_cutout=(248, 304, 64), instance_zoom=(2.0, 0.09, 3.3),
    labeling_backbone="DENSENET169", labeling_input=(152, 168, 32),
)
# The small networks at the real semantic model's resolution and patch, with REAL's absolute
# thresholds (a z-score rule is noisy on RSNA-sized phantoms): the CPU work around the networks
# (resampling, tiling, post-processing) is the real pipeline's, the networks cost next to nothing.
# What benchmarks/gpu.py's CPU figures use.
CPU = dataclasses.replace(SMALL, name="cpu", semantic_zoom=REAL.semantic_zoom, semantic_patch=REAL.semantic_patch,
                          semantic_normalization="CTNormalization", semantic_thresholds=REAL.semantic_thresholds)
# CPU with the semantic net at 3 mm: the least work that still runs every stage on an RSNA-sized
# field of view (benchmarks/gpu.py's CPU check, run by the tests).
TINY = dataclasses.replace(CPU, name="tiny", semantic_zoom=(3.0, 3.0, 3.0), semantic_patch=(32, 128, 128))
SIZES = {size.name: size for size in (TINY, SMALL, CPU, REAL)}
# CT normalisation of REAL: z = (clip(x, 0, 1500) - 0) / 100
_CT_SCALE = 100.0


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _inference_config(**overrides: object) -> dict:
    config = {
        "log_name": "test",
        "modality": "T2w",
        "acquisition": "sag",
        "modeltype": "nnunet",
        "model_expected_orientation": ["P", "I", "R"],
        "available_folds": 1,
        "inference_augmentation": False,
        "resolution_range": SEMANTIC_ZOOM,
        "default_step_size": 0.5,
        "labels": {},
    }
    config.update(overrides)
    return config


# --- semantic: nnU-Net v2 result folder ---------------------------------------------------

def _semantic_plans(size: ModelSet) -> dict:
    # TPTBox (SPINEPS's nnU-Net glue) transposes the (P, I, R) image to (R, I, P) for nnU-Net and
    # reverses the spacing with it: plans.json is in that order.
    resampling = "resample_data_or_seg_to_shape"  # looked up by name in nnunetv2.preprocessing.resampling
    patch = list(size.semantic_patch)
    spacing = list(reversed(size.semantic_zoom))   # (R, I, P), as TPTBox hands nnU-Net the image
    if size.semantic_normalization == "CTNormalization":
        # fixed statistics: z = (clip(x, 0, 1500) - 0) / 100 for every image
        intensities = {"max": 1500.0, "mean": 0.0, "median": 0.0, "min": 0.0,
                       "percentile_00_5": 0.0, "percentile_99_5": 1500.0, "std": _CT_SCALE}
    else:
        intensities = {"max": 1500.0, "mean": 500.0, "median": 500.0, "min": 0.0,
                       "percentile_00_5": 0.0, "percentile_99_5": 1500.0, "std": 300.0}
    return {
        "dataset_name": "Dataset999_BatchsegTest",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": patch,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": intensities},
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": patch,
                "median_image_size_in_voxels": patch,
                "spacing": spacing,
                "normalization_schemes": [size.semantic_normalization],
                "use_mask_for_norm": [False],
                "resampling_fn_data": resampling,
                "resampling_fn_seg": resampling,
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": resampling,
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
                "architecture": size.semantic_arch(designed=True),
                "batch_dice": False,
            }
        },
    }


def _plain_conv_unet(size: ModelSet, num_classes: int, designed: bool):
    """The semantic PlainConvUNet built straight from dynamic-network-architectures (no nnunetv2 needed)."""
    import pydoc

    arch = size.semantic_arch(designed)
    kwargs = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    network_class = pydoc.locate(arch["network_class_name"])
    return network_class(input_channels=1, num_classes=num_classes, deep_supervision=False, **kwargs)


def _centre(conv) -> tuple[int, int, int]:
    return tuple(k // 2 for k in conv.weight.shape[2:])


def _pass_channel_zero(block, in_channel: int) -> None:
    """Make a conv -> norm -> LeakyReLU block copy input channel `in_channel` to its channel 0."""
    conv = block.conv
    conv.weight[(0, in_channel, *_centre(conv))] = 1.0
    if getattr(block, "norm", None) is not None:
        block.norm.weight[0] = 1.0                       # stored statistics 0 / 1: the identity


def _semantic_network(size: ModelSet, num_classes: int):
    import torch

    net = _plain_conv_unet(size, num_classes, designed=True)
    body = 1 + size.semantic_labels.index("Vertebra_Corpus_border")
    disc = 1 + size.semantic_labels.index("Vertebra_Disc")
    t1, t2 = size.semantic_thresholds
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        # feature 0 carries the intensity z through the first stage's convolutions, then through
        # the skip connection's channel 0 (the decoder concatenates [upsampled, skip]) and the last
        # decoder stage's; every other path is zero
        first = net.encoder.stages[0][0].convs
        for index, block in enumerate(first):
            _pass_channel_zero(block, 0)
        last = net.decoder.stages[-1].convs
        skip0 = size.semantic_features[0]
        for index, block in enumerate(last):
            _pass_channel_zero(block, skip0 if index == 0 else 0)
        # logits: background 0, body 2(z - t1), disc 4z - 2(t1 + t2): body for t1 < z < t2, disc above
        seg = net.decoder.seg_layers[-1]
        seg.bias.fill_(-10.0)                            # labels the rule never gives
        seg.bias[0] = 0.0
        seg.weight[body, 0] = 2.0
        seg.bias[body] = -2.0 * t1
        seg.weight[disc, 0] = 4.0
        seg.bias[disc] = -2.0 * (t1 + t2)
    return net


def build_semantic(dest: Path, size: ModelSet = SMALL) -> Path:
    import torch

    folder = dest / SEMANTIC_NAME
    labels = {"background": 0, **{name: i + 1 for i, name in enumerate(size.semantic_labels)}}
    _write_json(folder / "dataset.json", {
        "channel_names": {"0": "T2w"},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    })
    _write_json(folder / "plans.json", _semantic_plans(size))
    _write_json(folder / "inference_config.json", _inference_config(
        log_name=f"T2w_semantic_{size.name}",
        modeltype="nnunet",
        resolution_range=list(size.semantic_zoom),
        labels={str(i + 1): name for i, name in enumerate(size.semantic_labels)},
    ))
    net = _semantic_network(size, len(labels))
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    torch.save({
        "network_weights": net.state_dict(),
        "trainer_name": "nnUNetTrainer",
        "init_args": {"configuration": "3d_fullres", "fold": 0},
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }, folder / "fold_0" / "checkpoint_final.pth")
    return folder


# --- instance: Lightning checkpoint of the 3D U-Net ----------------------------------------

def _lightning_checkpoint(model, path: Path) -> None:
    """Write what `LightningModule.load_from_checkpoint` reads, without a Trainer."""
    import pytorch_lightning as pl
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": pl.__version__,
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
    }, path)


INSTANCE_CHANNELS = 11      # PLNet's default: one-hot of the semantic mask's labels 0-10


def _design_instance(net, dim: int) -> None:
    import torch

    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        # GroupNorm of an all-zero map stays zero, so only the paths set here carry signal:
        # init conv sums the one-hot vertebra channels 1..10 (channel 0 is background) ...
        for channel in range(1, INSTANCE_CHANNELS):
            net.init_conv.weight[0, channel, 3, 3, 3] = 1.0
        # ... the final block's 1x1 residual conv passes it on (its input is [decoder, init]) ...
        net.final_res_block.res_conv.weight[0, dim] = 1.0
        # ... and the output says "this vertebra" (class 2) wherever it is set.
        net.final_conv.weight[2, 0] = 10.0
        net.final_conv.bias[2] = -5.0


def build_instance(dest: Path, size: ModelSet = SMALL) -> Path:
    from spineps.architectures_new.pl_unet import PLNet

    folder = dest / INSTANCE_NAME
    opt = Namespace(channelwise=True, n_epoch=1, lr=1e-4, lr_end_factor=0.01, l2_reg_w=1e-4, dsc_loss_w=1.0)
    model = PLNet(opt=opt, num_channels=INSTANCE_CHANNELS, dim=size.instance_dim)
    _design_instance(model.network, size.instance_dim)
    _lightning_checkpoint(model, folder / "weights" / "instance-weights.ckpt")
    _write_json(folder / "inference_config.json", _inference_config(
        log_name=f"instance_{size.name}",
        modality="SEG",
        modeltype="unet",
        resolution_range=list(size.instance_zoom),
        expected_inputs=["seg"],
        cutout_size=list(size.instance_cutout),
        labels={"1": "1", "2": "2", "3": "3"},
    ))
    return folder


# --- labeling: Lightning checkpoint of the classifier --------------------------------------

LABELING_HEADS = {"VERT": 24, "REGION": 3, "FULLYVISIBLE": 2}


def build_labeling(dest: Path, seed: int = 0, size: ModelSet = SMALL) -> Path:
    import torch
    from spineps.architectures.pl_densenet import ARGS_MODEL, PLClassifier

    torch.manual_seed(seed)
    folder = dest / LABELING_NAME
    opt = ARGS_MODEL(backbone=size.labeling_backbone, num_classes=sum(LABELING_HEADS.values()), in_channel=1)
    # SPINEPS reads the patch size from the checkpoint
    opt.final_size = tuple(size.labeling_input)
    model = PLClassifier(opt=opt, group_2_n_channel=dict(LABELING_HEADS))
    _lightning_checkpoint(model, folder / "weights" / "epoch=0-val_f1=0.0000-valf1-weights.ckpt")
    _write_json(folder / "inference_config.json", _inference_config(
        log_name=f"T2w_labeling_{size.name}",
        modeltype="classifier",
        resolution_range=[0.8571, 0.8571, 3.3],
        labels={"0": "0"},
    ))
    return folder


def build_random_models(dest: Path, size: ModelSet = SMALL) -> Path:
    """Write the three model folders under `dest` (the SPINEPS_SEGMENTOR_MODELS layout); return `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    build_semantic(dest, size)
    build_instance(dest, size)
    build_labeling(dest, size=size)
    return dest


# --- the bare networks, for timing them alone ----------------------------------------------

def _spineps_unet3d_class():
    """SPINEPS's architectures_new.unet3D.Unet3D, loaded from its file: importing the spineps
    package would pull in SimpleITK, ANTs and nnU-Net, which a GPU-timing machine may lack."""
    spec = importlib.util.find_spec("spineps")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("spineps is not installed (its architectures_new/unet3D.py is needed)")
    path = Path(list(spec.submodule_search_locations)[0]) / "architectures_new" / "unet3D.py"
    module_spec = importlib.util.spec_from_file_location("_spineps_unet3d", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.Unet3D


def bare_networks(size: ModelSet = REAL, seed: int = 0) -> dict:
    """{"semantic", "instance", "labeling"}: torch modules of the three models' architecture, in eval mode.

    The semantic one uses per-tile instance norm statistics (nnU-Net's default); the instance
    one is PLNet's network (Unet3D, out_dim 4, as PLNet builds it); the labeling one is the
    DenseNet/ResNet backbone with its classification heads as one linear layer.
    """
    import torch

    torch.manual_seed(seed)
    semantic = _plain_conv_unet(size, 1 + len(size.semantic_labels), designed=False)
    instance = _spineps_unet3d_class()(dim=size.instance_dim, dim_mults=(1, 2, 4, 8), out_dim=4,
                                       channels=INSTANCE_CHANNELS)
    n_out = sum(LABELING_HEADS.values())
    if size.labeling_backbone == "DENSENET169":
        from monai.networks.nets import DenseNet169

        labeling = DenseNet169(spatial_dims=3, in_channels=1, out_channels=n_out)
    else:
        from monai.networks.nets.resnet import resnet10

        labeling = resnet10(spatial_dims=3, n_input_channels=1, num_classes=n_out)
    return {name: net.eval() for name, net in
            (("semantic", semantic), ("instance", instance), ("labeling", labeling))}


# --- a matching input image ----------------------------------------------------------------

def sagittal_phantom(path: Path, n_bodies: int = 5, slices: int = 14, rows: int = 128, cols: int = 128) -> Path:
    """A sagittal T2w-like NIfTI the designed semantic net segments into `n_bodies` bodies.

    Grid (x = right-left slices at 3.5 mm, y = posterior->anterior at 1 mm, z = inferior->superior
    at 1 mm), stored like a converted sagittal DICOM series (RAS+ affine, slices along x).
    Bodies are 18 mm tall with 7 mm discs: a 24 mm cutout centred on one body misses its neighbours;
    the body/disc contrast (bright discs) puts them on either side of the net's thresholds.
    """
    import nibabel as nib

    data = np.zeros((slices, rows, cols), dtype=np.int16)
    # a soft-tissue slab so the background is not just air
    data[:, 20:108, 4:124] = 150
    top = 8
    for k in range(n_bodies):
        z0 = top + k * 25
        data[3:slices - 3, 50:85, z0:z0 + 18] = 700      # vertebral body
        if k < n_bodies - 1:
            data[3:slices - 3, 52:83, z0 + 18:z0 + 25] = 1400  # disc
    affine = np.array([
        [3.5, 0.0, 0.0, -3.5 * slices / 2],
        [0.0, 1.0, 0.0, -rows / 2],
        [0.0, 0.0, 1.0, -cols / 2],
        [0.0, 0.0, 0.0, 1.0],
    ])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
