"""What the restoration workflows (denoising, super_resolution, image_to_image) share: images
paired with target images by name, targets normalized with statistics stored in the model,
L1/L2/SSIM losses, seamless tiled prediction back in the targets' units, PSNR/SSIM/NRMSE/
Pearson r per image and channel, and large volumes block by block."""
