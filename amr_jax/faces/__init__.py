"""Faces: MTCNN in JAX (:mod:`amr_jax.faces.mtcnn`, :mod:`amr_jax.faces.mtcnn_networks`) and the eye-aligned crop
made from its landmarks or FG-NET's (:mod:`amr_jax.faces.face_crop`)."""
