"""The 64 px demo model that ships in ``kfi_core/assets/demo_model``, trained from scratch on procedural clips.

No SVD weights can be downloaded where KFI is built, so the project proves its method end to end at small scale: a
small model of the real architecture (diffusers' AutoencoderKLTemporalDecoder and UNetSpatioTemporalConditionModel,
transformers' CLIPVisionModelWithProjection, shapes from :mod:`kfi_core.model.tiny`) is trained on
:mod:`kfi_core.evaluation.procedural` clips, then the KFI adapter is trained on it exactly as the method says
(:mod:`kfi_core.training`: LoRA and the 12-channel input conv only). One command runs every phase
(``python -m research.demo_model --out runs/demo``, recipe ``research/demo_model/recipe.json``); each phase saves
checkpoints and a rerun resumes from the newest, so training may span several runs (``--max-minutes`` ends a run
cleanly).

Phases (one module each)
    data          (:mod:`.data`) procedural clips (seeds below ``EVAL_SEED_BASE``) written as PNG frame folders for
                  the adapter phase, which reads datasets from disk like any user's.
    vae, decoder  (:mod:`.vae`) the VAE alone: L1 + MSE reconstruction of clips through the temporal decoder, a tiny
                  KL term and the colour terms; then ``scaling_factor`` = 1 / the latent std (EDM assumes unit
                  variance). The decoder phase trains the decoder alone, encoder frozen. With ``balance_latents`` the
                  finished VAE's latent channels are then scaled to one spread (an exact reparametrisation), saved to
                  ``<out>/vae/balanced``, which the backbone and everything after it use.
    backbone      (:mod:`.backbone`) UNet and image encoder together, VAE frozen, with SVD's stock image-to-video
                  conditioning (for ``first_frame_only_prob`` of the samples the image latent on frame 0 alone),
                  EDM v-prediction. Written as a diffusers StableVideoDiffusionPipeline folder.
    adapter       (:mod:`.adapter`) :func:`kfi_core.training.train` (the trainer) on that folder and the data folder.
    adapter_tune  (:mod:`.adapter`) the finished adapter fine-tuned in rounds, each from the one before, each on the
                  data clips plus its own recoloured and removal clips; a round's ``package_as`` names the file the
                  package ships its adapter as.
    package       (:mod:`.build`) backbone folder + adapters in ``<out>/demo_model``, size checked.

Where the seeds are silent (written down here and in ``recipe.json``): the noise level distribution is shifted lower
than SVD's (P_mean -0.5 instead of 0.7; 16x16 latents lose their signal at lower noise than SVD's 72x128), and the
sampler's ``sigma_max`` is EDM's 80 instead of SVD's 700, so no sampling step falls where training never went.
"""
