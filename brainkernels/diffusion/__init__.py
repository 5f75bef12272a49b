"""Method-independent diffusion models: the noise schedule with DDPM/DDIM sampling
(:mod:`~brainkernels.diffusion.process`) and the memory-lean U-Net and its encoder half
(:mod:`~brainkernels.diffusion.unet`), used by PatchDDM (3D) and the INR's DDM+GG baseline (2D)."""
