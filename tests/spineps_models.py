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

Only test code imports this module; it needs torch, pytorch-lightning, nnunetv2 and spineps.
"""
from __future__ import annotations

import json
from argparse import Namespace
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

_SEMANTIC_ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 2,
        "features_per_stage": [4, 4],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [2, 2, 2]],
        "n_conv_per_stage": [1, 1],
        "n_conv_per_stage_decoder": [1],
        "conv_bias": True,
        # no normalisation layer: an instance norm would re-scale every sliding-window tile on
        # its own and the intensity threshold below would move from tile to tile
        "norm_op": None,
        "norm_op_kwargs": None,
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def _semantic_plans() -> dict:
    # nnU-Net axes are the image's (P, I, R) after SPINEPS reoriented it.
    resampling = "resample_data_or_seg_to_shape"  # looked up by name in nnunetv2.preprocessing.resampling
    return {
        "dataset_name": "Dataset999_BatchsegTest",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": SEMANTIC_ZOOM,
        "original_median_shape_after_transp": [128, 128, 16],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1500.0, "mean": 500.0, "median": 500.0, "min": 0.0,
                  "percentile_00_5": 0.0, "percentile_99_5": 1500.0, "std": 300.0}
        },
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [128, 128, 16],
                "median_image_size_in_voxels": [128, 128, 16],
                "spacing": SEMANTIC_ZOOM,
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": resampling,
                "resampling_fn_seg": resampling,
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": resampling,
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
                "architecture": _SEMANTIC_ARCH,
                "batch_dice": False,
            }
        },
    }


def _semantic_network(num_classes: int):
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    net = get_network_from_plans(
        _SEMANTIC_ARCH["network_class_name"], _SEMANTIC_ARCH["arch_kwargs"],
        _SEMANTIC_ARCH["_kw_requires_import"], 1, num_classes, deep_supervision=False,
    )
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        # feature 0 carries the intensity through: centre tap of the first conv, then the skip
        # connection's channel 0 (the decoder concatenates [upsampled, skip]) in the decoder conv
        net.encoder.stages[0][0].convs[0].conv.weight[0, 0, 1, 1, 1] = 1.0
        skip0 = _SEMANTIC_ARCH["arch_kwargs"]["features_per_stage"][1]
        net.decoder.stages[0].convs[0].conv.weight[0, skip0, 1, 1, 1] = 1.0
        # logits: background 0, body 2(z-1), disc 4(z-2) -> body for 1<z<3, disc for z>3
        seg = net.decoder.seg_layers[0]
        seg.weight[1, 0] = 2.0
        seg.bias[1] = -2.0
        seg.weight[2, 0] = 4.0
        seg.bias[2] = -8.0
    return net


def build_semantic(dest: Path) -> Path:
    import torch

    folder = dest / SEMANTIC_NAME
    labels = {"background": 0, "Vertebra_Corpus_border": 1, "Vertebra_Disc": 2}
    _write_json(folder / "dataset.json", {
        "channel_names": {"0": "T2w"},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    })
    _write_json(folder / "plans.json", _semantic_plans())
    _write_json(folder / "inference_config.json", _inference_config(
        log_name="T2w_semantic_test",
        modeltype="nnunet",
        labels={"1": "Vertebra_Corpus_border", "2": "Vertebra_Disc"},
    ))
    net = _semantic_network(len(labels))
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


def build_instance(dest: Path) -> Path:
    import torch
    from spineps.architectures_new.pl_unet import PLNet

    folder = dest / INSTANCE_NAME
    opt = Namespace(channelwise=True, n_epoch=1, lr=1e-4, lr_end_factor=0.01, l2_reg_w=1e-4, dsc_loss_w=1.0)
    model = PLNet(opt=opt, num_channels=11, dim=8)
    net = model.network
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        # GroupNorm of an all-zero map stays zero, so only the paths set here carry signal:
        # init conv sums the one-hot vertebra channels 1..10 (channel 0 is background) ...
        for channel in range(1, 11):
            net.init_conv.weight[0, channel, 3, 3, 3] = 1.0
        # ... the final block's 1x1 residual conv passes it on (its input is [decoder, init]) ...
        net.final_res_block.res_conv.weight[0, 8] = 1.0
        # ... and the output says "this vertebra" (class 2) wherever it is set.
        net.final_conv.weight[2, 0] = 10.0
        net.final_conv.bias[2] = -5.0
    _lightning_checkpoint(model, folder / "weights" / "instance-weights.ckpt")
    _write_json(folder / "inference_config.json", _inference_config(
        log_name="instance_test",
        modality="SEG",
        modeltype="unet",
        resolution_range=INSTANCE_ZOOM,
        expected_inputs=["seg"],
        cutout_size=INSTANCE_CUTOUT,
        labels={"1": "1", "2": "2", "3": "3"},
    ))
    return folder


# --- labeling: Lightning checkpoint of the classifier --------------------------------------

LABELING_HEADS = {"VERT": 24, "REGION": 3, "FULLYVISIBLE": 2}


def build_labeling(dest: Path, seed: int = 0) -> Path:
    import torch
    from spineps.architectures.pl_densenet import ARGS_MODEL, PLClassifier

    torch.manual_seed(seed)
    folder = dest / LABELING_NAME
    opt = ARGS_MODEL(backbone="RESNET10", num_classes=sum(LABELING_HEADS.values()), in_channel=1)
    # SPINEPS reads the patch size from the checkpoint; a small patch keeps CPU time low
    opt.final_size = (32, 32, 16)
    model = PLClassifier(opt=opt, group_2_n_channel=dict(LABELING_HEADS))
    _lightning_checkpoint(model, folder / "weights" / "epoch=0-val_f1=0.0000-valf1-weights.ckpt")
    _write_json(folder / "inference_config.json", _inference_config(
        log_name="T2w_labeling_test",
        modeltype="classifier",
        resolution_range=[0.8571, 0.8571, 3.3],
        labels={"0": "0"},
    ))
    return folder


def build_random_models(dest: Path) -> Path:
    """Write the three model folders under `dest` (the SPINEPS_SEGMENTOR_MODELS layout); return `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    build_semantic(dest)
    build_instance(dest)
    build_labeling(dest)
    return dest


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
