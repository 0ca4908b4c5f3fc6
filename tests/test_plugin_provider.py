"""The plugin shell: classFactory, provider registration, the algorithm's declared interface and help,
missing-dependency messages, and the Python-path bridge that ``make install`` configures."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

from qgis.core import (
    QgsApplication,
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingOutputHtml,
    QgsProcessingOutputRasterLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
)

from s2seg.s2seg_plugin import dependencies, environment, plugin_metadata

ALG_ID = "s2seg:segmenttile"


def test_metadata_declares_a_processing_provider():
    meta = plugin_metadata()
    for key in ("name", "description", "about", "version", "qgisminimumversion", "author", "email",
                "repository", "tracker", "category", "tags", "icon"):
        assert meta.get(key), f"metadata.txt lacks {key}"
    assert meta["hasprocessingprovider"] == "yes"
    assert meta["qgisminimumversion"] == "3.22"
    assert meta["category"] == "Raster"
    from s2seg.s2seg_plugin import PLUGIN_DIR

    assert (PLUGIN_DIR / meta["icon"]).is_file()
    assert (PLUGIN_DIR / "LICENSE").read_text().count("GNU GENERAL PUBLIC LICENSE") >= 1


def test_class_factory_without_iface_registers_and_unloads(qgis_processing):
    """What qgis_process does: classFactory(None), then initProcessing(); unload() removes the provider."""
    import s2seg

    registry = QgsApplication.processingRegistry()
    previous = registry.providerById("s2seg")
    if previous is not None:  # the session's provider: step aside, and come back afterwards
        registry.removeProvider(previous)
    try:
        plugin = s2seg.classFactory(None)
        plugin.initProcessing()
        assert registry.providerById("s2seg") is not None
        assert registry.algorithmById(ALG_ID) is not None
        plugin.unload()
        assert registry.providerById("s2seg") is None
    finally:
        if previous is not None:
            from s2seg.s2seg_plugin.provider import S2SegProvider

            registry.addProvider(S2SegProvider())


def test_provider_and_algorithm_identity(s2seg_provider):
    assert s2seg_provider.id() == "s2seg"
    assert s2seg_provider.name() == "S2Seg"
    assert not s2seg_provider.icon().isNull()
    alg = QgsApplication.processingRegistry().algorithmById(ALG_ID)
    assert alg is not None
    assert alg.displayName() == "Segment Sentinel-2 tile"
    assert (alg.group(), alg.groupId()) == ("Segmentation", "segmentation")
    assert not alg.flags() & alg.FlagNoThreading  # the dialog must run it as a background task
    assert alg.flags() & alg.FlagCanCancel


def test_parameters(s2seg_provider):
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALG_ID)
    params = {p.name(): p for p in alg.parameterDefinitions()}
    assert list(params) == ["INPUT", "STACK_LAYER", "EXTENT", "MASK", "MODEL", "MODEL_FILE", "CLOUD_MASK",
                            "KEEP_MASKED", "CHUNK_SIZE", "BATCH_SIZE", "DEVICE",
                            "WRITE_PROBS", "BANDS", "SCALE", "OFFSET", "PRODUCTS", "VECTOR", "MMU", "COG", "RESUME", "OVERWRITE", "OUTPUT_FOLDER"]
    assert isinstance(params["INPUT"], QgsProcessingParameterFile)
    # The … button picks files: a .zip, or a file inside a .SAFE or a band folder (see tile_path).
    assert params["INPUT"].behavior() == QgsProcessingParameterFile.File
    assert "*.zip" in params["INPUT"].fileFilter() and "manifest.safe" in params["INPUT"].fileFilter()
    for typed in ("/data/T32UNU.SAFE", "/data/IMG_DATA", "/data/S2A.zip", "/data/bands.txt",
                  "https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/S2B_32UNU_20240612_0_L2A"):
        assert params["INPUT"].checkValueIsAcceptable(typed), typed
    model = params["MODEL"]
    assert isinstance(model, QgsProcessingParameterEnum) and model.usesStaticStrings()
    from s2seg.core.models import DEFAULT_MODEL, available_cards, zoo

    assert model.options()[0] == DEFAULT_MODEL and model.defaultValue() == DEFAULT_MODEL
    # The downloadable BigEarthNet v2 models follow, by their labels ("… — download 95 MB").
    assert sorted(model.options()) == sorted([*available_cards(), *(e.choice for e in zoo.CATALOGUE.values())])
    assert isinstance(params["MODEL_FILE"], QgsProcessingParameterFile)
    assert params["MODEL_FILE"].flags() & QgsProcessingParameterDefinition.FlagOptional
    for name in ("CHUNK_SIZE", "BATCH_SIZE"):
        assert isinstance(params[name], QgsProcessingParameterNumber)
        assert params[name].defaultValue() == 0 and params[name].minimum() == 0
    from s2seg.core.config import DEVICES, RESUME_MODES

    assert params["DEVICE"].options() == list(DEVICES) and "mps" in DEVICES
    assert params["DEVICE"].defaultValue() == "auto" and params["DEVICE"].usesStaticStrings()
    resume = params["RESUME"]
    assert isinstance(resume, QgsProcessingParameterEnum) and resume.usesStaticStrings()
    assert resume.options() == list(RESUME_MODES) == ["auto", "require", "never"]
    assert resume.defaultValue() == "auto"
    assert resume.flags() & QgsProcessingParameterDefinition.FlagOptional  # models saved without it stay valid
    for name in ("CHUNK_SIZE", "BATCH_SIZE", "DEVICE", "RESUME"):
        assert params[name].flags() & QgsProcessingParameterDefinition.FlagAdvanced, name
    assert isinstance(params["WRITE_PROBS"], QgsProcessingParameterBoolean)
    assert params["WRITE_PROBS"].defaultValue() is False
    overwrite = params["OVERWRITE"]  # finished products are never replaced unless asked
    assert isinstance(overwrite, QgsProcessingParameterBoolean) and overwrite.defaultValue() is False
    assert overwrite.flags() & QgsProcessingParameterDefinition.FlagOptional
    assert not overwrite.flags() & QgsProcessingParameterDefinition.FlagAdvanced
    assert isinstance(params["OUTPUT_FOLDER"], QgsProcessingParameterFolderDestination)


def test_outputs_are_declared_for_the_modeler(s2seg_provider):
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALG_ID)
    outputs = {o.name(): type(o) for o in alg.outputDefinitions()}
    for name in ("CLASS", "MAXPROB", "ENTROPY", "GAP", "PROBS"):
        assert outputs[name] is QgsProcessingOutputRasterLayer
    assert outputs["PREVIEW"] is QgsProcessingOutputFile
    assert outputs["REPORT"] is QgsProcessingOutputHtml
    assert outputs["OUTPUT_FOLDER"] is QgsProcessingOutputFolder
    assert alg.hasHtmlOutputs()


def test_help_explains_every_parameter_and_output(s2seg_provider):
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALG_ID)
    text = alg.shortHelpString()
    for phrase in ("Sentinel-2 tile", "Model file or folder", "Chunk size", "Batch size", "Device", "mps",
                   "Write class probabilities", "Resume an interrupted run", "Overwrite existing outputs", "<i>auto</i>", "<i>require</i>",
                   "<i>never</i>", "Output folder", "Land cover", "Max probability", "Entropy",
                   "Gap", "decision boundary", "Preview", "…_preview.png", "Report", "km²", ".qml"):
        assert phrase in text, phrase
    assert "log₂" in text  # entropy's range is spelled out
    assert "preview.png" not in text.replace("_preview.png", "")  # named after the tile, like every product


def test_model_spec_maps_checkpoint_files_to_their_folder(tmp_path):
    from s2seg.algorithms.common import model_spec

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.onnx").write_text("")
    assert model_spec("builtin", "") == "builtin"
    assert model_spec("builtin", str(tmp_path / "config.json")) == str(tmp_path)
    assert model_spec("builtin", str(tmp_path / "model.onnx")) == str(tmp_path / "model.onnx")
    assert model_spec("builtin", str(tmp_path)) == str(tmp_path)


# --- missing dependencies --------------------------------------------------------------------------
def test_missing_dependency_message_names_module_and_command(monkeypatch):
    fake = dependencies.Requirement("s2seg_no_such_module", "s2seg-no-such-module", "testing",
                                    ("--extra-index-url", "https://example.org/simple"))
    message = dependencies.missing_dependencies_message((fake,))
    assert "s2seg-no-such-module" in message and "No module named" in message
    command = dependencies.install_commands(dependencies.missing_requirements((fake,)))
    assert len(command) == 1
    assert " -m pip install " in command[0]
    assert command[0].endswith("s2seg-no-such-module --extra-index-url https://example.org/simple")
    assert command[0] in message
    assert "Plugins ▸ S2Seg ▸ Install dependencies…" in message  # the way without a terminal comes first
    assert message.index("Install dependencies") < message.index(command[0])
    assert dependencies.missing_dependencies_message((dependencies.Requirement("json", "json", "x"),)) is None


def test_missing_dependency_command_respects_managed_python(monkeypatch):
    missing = [dependencies.MissingRequirement(r, "ImportError") for r in dependencies.REQUIRED]
    monkeypatch.setattr(dependencies, "_in_virtualenv", lambda: False)
    monkeypatch.setattr(dependencies, "_externally_managed", lambda: True)
    commands = dependencies.install_commands(missing)
    assert commands[0] == "sudo apt install python3-numpy python3-rasterio"
    assert "--user --break-system-packages torch --extra-index-url https://download.pytorch.org/whl/cpu" in commands[1]
    monkeypatch.setattr(dependencies, "_in_virtualenv", lambda: True)
    (command,) = dependencies.install_commands(missing[:1])
    assert "--user" not in command
    assert command.endswith("install torch --extra-index-url https://download.pytorch.org/whl/cpu")


def test_torch_index_never_replaces_pypi_for_other_packages(monkeypatch):
    """Regression: with torch and rasterio missing the command was ``pip install --user torch rasterio
    --index-url …/whl/cpu``, which hides PyPI and cannot find rasterio."""
    missing = [dependencies.MissingRequirement(r, "ImportError") for r in dependencies.REQUIRED
               if r.module in ("torch", "rasterio")]
    monkeypatch.setattr(dependencies, "_externally_managed", lambda: False)
    monkeypatch.setattr(dependencies, "python_executable", lambda: "/usr/bin/python3.11")
    for in_venv in (False, True):
        monkeypatch.setattr(dependencies, "_in_virtualenv", lambda: in_venv)
        commands = dependencies.install_commands(missing)
        assert all("--index-url" not in c.replace("--extra-index-url", "") for c in commands), commands
        (rasterio,) = [c for c in commands if " rasterio" in c]
        assert "download.pytorch.org" not in rasterio and " torch" not in rasterio
        (torch,) = [c for c in commands if " torch" in c]
        assert torch.endswith("torch --extra-index-url https://download.pytorch.org/whl/cpu")
        assert all(c.startswith("/usr/bin/python3.11 -m pip install ") for c in commands)


def test_all_runtime_dependencies_present_here():
    assert dependencies.missing_dependencies_message() is None


def test_provider_loads_without_torch_and_algorithm_says_how_to_install(tmp_path):
    """A QGIS whose Python has no torch: the provider loads, the run stops early with the pip command."""
    script = tmp_path / "no_torch.py"
    script.write_text(
        "import sys\n"
        "sys.modules['torch'] = None  # makes `import torch` raise ImportError\n"
        "sys.path.append('/usr/share/qgis/python/plugins')\n"
        "from qgis.core import QgsApplication, QgsProcessingException\n"
        "app = QgsApplication([], False); app.initQgis()\n"
        "from processing.core.Processing import Processing; Processing.initialize()\n"
        "import processing, s2seg\n"
        "plugin = s2seg.classFactory(None); plugin.initProcessing()\n"
        "alg = QgsApplication.processingRegistry().algorithmById('s2seg:segmenttile')\n"
        "print('MODELS', alg.parameterDefinition('MODEL').options())\n"
        f"try:\n    processing.run('s2seg:segmenttile', {{'INPUT': {str(tmp_path)!r}, 'OUTPUT_FOLDER': {str(tmp_path / 'out')!r}}})\n"
        "except QgsProcessingException as exc:\n    print('ERROR', exc)\n"
        "plugin.unload()\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0, proc.stderr
    assert "MODELS ['builtin'" in proc.stdout  # the default first (the model cards need no torch)
    error = proc.stdout.split("ERROR", 1)[1]
    assert "lacks torch" in error and "-m pip install" in error and "download.pytorch.org/whl/cpu" in error
    assert not (tmp_path / "out").exists()  # failed before doing anything
    assert "Traceback" not in proc.stderr


# --- Python path bridge ---------------------------------------------------------------------------
def test_extra_python_paths_go_before_site_packages(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    path = ["/usr/lib/python311.zip", "/usr/lib/python3.11", "/usr/lib/python3/dist-packages", "/x/site-packages"]
    added = environment.add_python_paths([str(a), str(tmp_path / "missing"), str(b), str(a)], path)
    assert added == [str(a), str(b)]
    assert path == ["/usr/lib/python311.zip", "/usr/lib/python3.11", str(a), str(b),
                    "/usr/lib/python3/dist-packages", "/x/site-packages"]


def test_extra_python_paths_read_from_qgis_settings(tmp_path, monkeypatch):
    from qgis.core import QgsSettings

    settings = QgsSettings()
    settings.setValue(environment.SETTINGS_KEY, f"{tmp_path}{os.pathsep}/nonexistent")
    try:
        assert environment.configured_paths() == [str(tmp_path), "/nonexistent"]
        monkeypatch.setattr(sys, "path", list(sys.path))
        assert environment.apply_configured_paths() == [str(tmp_path)]
        assert environment.apply_configured_paths() == []  # idempotent
    finally:
        settings.remove(environment.SETTINGS_KEY)
    assert environment.configured_paths() == []
    importlib.invalidate_caches()
