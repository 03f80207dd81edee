"""Digests (`bonenet.digests`): known answers, and what each one notices."""

import hashlib

import keras
import numpy as np

from bonenet.digests import file_sha256, files_digest, folder_digest, weights_digest


def test_a_files_sha256_is_hashlibs_of_its_bytes(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG" + bytes(range(256)) * 300)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_list_digest_notices_a_changed_pixel_a_rename_and_the_order(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    first = files_digest([a, b])
    assert files_digest([b, a]) != first
    b.write_bytes(b"twO")
    assert files_digest([a, b]) != first
    b.write_bytes(b"two")
    assert files_digest([a, b]) == first
    b.rename(tmp_path / "c.png")
    assert files_digest([a, tmp_path / "c.png"]) != first


def test_a_folder_digest_reads_only_the_data_files(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "image1.png").write_bytes(b"pixels")
    (tmp_path / "labels.csv").write_text("x/image1.png,1\n")
    first = folder_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("not data")
    assert folder_digest(tmp_path) == first
    (tmp_path / "labels.csv").write_text("x/image1.png,0\n")
    assert folder_digest(tmp_path) != first


def test_a_weights_digest_names_the_values_not_the_layer_names():
    def model(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])

    one, same, other = model(0), model(0), model(1)
    assert weights_digest(one) == weights_digest(same) != weights_digest(other)
    one.layers[0].kernel.assign(one.layers[0].kernel.numpy() + np.float32(1e-3))
    assert weights_digest(one) != weights_digest(same)


def test_one_cache_key_scheme_changes_with_the_facts_and_with_the_files(tmp_path):
    import os

    from bonenet.digests import cache_key

    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    key = cache_key({"size": 48}, [image])
    assert len(key) == 20 and key == cache_key({"size": 48}, [image])
    assert key != cache_key({"size": 64}, [image]) and len(cache_key({"size": 48}, [image], 16)) == 16
    st = os.stat(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten in place
    assert key != cache_key({"size": 48}, [image])
