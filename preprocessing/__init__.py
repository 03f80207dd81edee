"""Image-only preprocessing for BoneNet: NumPy/OpenCV arrays in, arrays out, no TensorFlow."""
