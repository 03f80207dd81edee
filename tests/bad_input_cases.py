"""The bad-input and fault corpus: every hostile or odd input met so far, one id per case.

Tests carry `@pytest.mark.corpus("<id>", ...)` in the test file of the module they exercise, and the
end of every pytest run counts the cases tried and passed (tests/conftest.py).
"""

CASES = {
    # Cases that held when the corpus was first run.
    "H01": "corrupt PNG body among good images",
    "H02": "empty (0-byte) PNG",
    "H03": "truncated PNG",
    "H04": "fake PNG (text named .png)",
    "H05": "macOS ._ resource-fork files",
    "H06": "8-bit grayscale PNG",
    "H07": "16-bit PNG",
    "H08": "RGB PNG",
    "H09": "RGBA PNG",
    "H10": "MURA CSVs with a header row",
    "H11": "MURA CSVs without a header (the official form)",
    "H12": "label conflicting with the study folder's suffix",
    "H13": "kill -9 mid-epoch, then --resume",
    "H14": "kill -9 during a save",
    "H15": "two trainings with the same seed into one folder",
    # Tracebacks.
    "T1": "read-only or unwritable output, for every writing command",
    "T2": "disk full: evaluate --out, a model save, the feature cache",
    "T3": "corrupt model file: bad CRC inside an intact zip; truncated file",
    "T4": "predict: a folder named like an image; an unreadable (mode 000) image among good ones",
    "T5": "preprocess on a folder",
    "T6": "data-summary: a listed path that is a folder, or unreadable",
    # Silent wrong or missing results.
    "S1": "predict --cam-dir into a read-only folder",
    "S2": "predict on an empty folder, or one without images",
    "S3": "run-level recipe disagreeing with the models' own",
    "S4": "two trainings with different seeds into one empty folder",
    "S5": "evaluate or report killed mid-write over an earlier output",
    # Minor.
    "M1": "training skip messages name the file",
    "M2": "data-summary trusting first and last bytes (--verify decodes)",
    "M3": "evaluate lists its skipped files",
    "M4": "--trainable-layers differing from the run's",
    "M5": "a head built for another input size copied into a run",
    "M6": "--resume after a kill during the final save",
    "M7": "make-synthetic killed over an existing dataset",
    "M8": "too few studies per part and label",
    "M9": "invalid metrics.json given to report",
    # Also seen.
    "A1": "a 10000 x 10000 PNG",
    "A2": "run files private (mode 0600)",
    "A3": "epochs_run counting only the resumed part",
    "A4": "train-all --resume keeping heads that do not load",
    # Real radiographs and hostile input.
    "R1": "a JPEG named .png, a 1x1 PNG, and PNG, JPEG and DICOM mixed in one dataset",
    "R2": "Ctrl-C (SIGINT) during training",
    "R3": "a head file replaced by another model's head (router for a part, a part for the router, part for part)",
    "R4": "a JPEG with EXIF orientation 3, 6 or 8",
    "R5": "a broken link, a ._ file, .DS_Store, a text file and an empty folder inside a study folder",
    "R6": "a path too long for the file system among good inputs",
    "R7": "a PNG whose iCCP profile makes libpng warn on its own line",
    "R8": "a folder of unrelated images predicted as one study",
    "R9": "predict on a folder of 5,000 images",
    "R10": "predict --cam-dir killed while writing a heat map",
    "B1": "serve: a PNG declaring 30,000 x 30,000 pixels (a decompression bomb)",
    "B2": "serve: a very long file name, 10,000 fields, 10,000 files, no boundary, unknown paths and methods",
    "B3": "serve: a client that stalls mid-upload, or disconnects",
    # Degenerate figures and anonymised DICOM.
    "C1": "evaluate --bootstrap 0",
    "C2": "a valid split where a part has studies of one class only",
    "C3": "a training hold-out of 12 studies: no temperature, no tuned threshold",
    "D1": "predict --dicom-out on a DICOM lacking every type 2 patient and study attribute",
    "D2": "predict --dicom-out on a DICOM whose PatientName is not ASCII (ISO_IR 192)",
    "D3": "predict --dicom-out on a folder mixing two DICOM studies",
    # Run files read back.
    "V1": "a manifest temperature of 0, -1, NaN, 1e9, a string or a bool; a threshold of 1.5, NaN or a string",
    "V2": "a manifest calibration without fitted_on",
    "V3": "fracatlas-datalist on a dataset.csv lacking the shoulder or fractured column",
    "V4": "export --out (or evaluate, report, make-synthetic) into a folder of the user's own files",
    "V5": "a finished feature cache with 4 KB flipped in the middle of features.npy",
    "V6": "--resume with another --learning-rate or --image-size than the killed training's",
    "V7": "a datalist listing an image twice with labels 0 and 1; Latin-1 bytes; a header and no rows",
    "V8": "a datalist patient with studies in both train and valid",
    # The local server and the browser.
    "W1": "serve: Host: evil.example (DNS rebinding) on the page, /api/health and /api/predict",
    "W2": "serve: a cross-origin POST, and a CORS preflight",
    "W3": "serve: a token required on the API; --host 0.0.0.0 without one",
}
