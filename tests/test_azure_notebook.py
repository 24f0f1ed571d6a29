"""An Azure ML v1 notebook, ported by one prefix (issue 26): ScriptRunConfig with a dataset
and an environment, HyperDrive (4 trials, 2 at once, a loguniform space, a bandit policy),
the best run, register, deploy, service.run, a raw HTTP POST, update, delete. Real runs on
the local target, the workspace's real Prefect server, real TensorFlow, real endpoints."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import JOBS

from tfsubmit.azureml.core import (
    ComputeTarget,
    Dataset,
    Environment,
    Experiment,
    Run,
    ScriptRunConfig,
    Workspace,
)
from tfsubmit.azureml.core.model import InferenceConfig, Model
from tfsubmit.azureml.core.webservice import AciWebservice, Webservice
from tfsubmit.azureml.train.hyperdrive import (
    BanditPolicy,
    HyperDriveConfig,
    PrimaryMetricGoal,
    RandomParameterSampling,
    choice,
    loguniform,
    randint,
)
from tfsubmit.errors import JobSpecError, TargetError

pytestmark = pytest.mark.e2e
NOTEBOOK = JOBS / "azure_notebook"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("azure-data")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 4))
    y = (x.sum(axis=1) > 0).astype(float)
    rows = np.column_stack([x, y])
    np.savetxt(folder / "train.csv", rows, delimiter=",", header="a,b,c,d,y", comments="")
    return folder


@pytest.fixture(scope="module", autouse=True)
def no_endpoint_left(workspace):
    yield
    from tfsubmit.serving.endpoints import Endpoints

    endpoints = Endpoints(workspace)
    for name in endpoints.names():
        endpoints.delete(name)


@pytest.fixture(scope="module")
def notebook(workspace, data_dir, tmp_path_factory):
    """The notebook's cells up to a trained, tuned, registered model."""
    ws = Workspace.from_config()  # TFSUBMIT_WORKSPACE: the tests' workspace
    assert ws.root == workspace.root
    compute = ComputeTarget(workspace=ws, name="local")
    requirements = tmp_path_factory.mktemp("env") / "requirements.txt"
    requirements.write_text("tensorflow==2.21.*\nazureml-defaults\n")
    env = Environment.from_pip_requirements("tf-env", requirements)
    dataset = Dataset.File.from_files(path=str(data_dir))
    src = ScriptRunConfig(source_directory=str(NOTEBOOK), script="train.py",
                          arguments=["--data-folder", dataset.as_named_input("data").as_mount(),
                                     "--epochs", 3],
                          compute_target=compute, environment=env)
    run = Experiment(ws, "az-notebook").submit(src)
    run.wait_for_completion(show_output=False)
    sampling = RandomParameterSampling({"--learning-rate": loguniform(-6, -1),
                                        "batch-size": choice(16, 32)})
    hd_config = HyperDriveConfig(run_config=src, hyperparameter_sampling=sampling,
                                 policy=BanditPolicy(evaluation_interval=1, slack_factor=0.5,
                                                     delay_evaluation=1),
                                 primary_metric_name="val_loss",
                                 primary_metric_goal=PrimaryMetricGoal.MINIMIZE,
                                 max_total_runs=4, max_concurrent_runs=2)
    hd_run = Experiment(ws, "az-hyperdrive").submit(hd_config)
    hd_run.wait_for_completion(show_output=False)
    best = hd_run.get_best_run_by_primary_metric()
    model = best.register_model(model_name="az-model", model_path="outputs/model")
    return {"ws": ws, "env": env, "run": run, "hd_run": hd_run, "best": best,
            "model": model, "src": src}


def test_script_run_config_runs_with_its_dataset_and_environment(notebook, data_dir):
    run, env = notebook["run"], notebook["env"]
    assert env.framework_version == "2.21" and env.pip_packages == []  # azureml-defaults
    assert run.get_status() == "Completed"
    assert len(run.get_metrics()["val_loss"]) == 3
    assert "--data-folder .inputs/data-folder" in run.paths.output_log.read_text()
    # Azure's names a port needs: Run(experiment, run_id) and Experiment.get_runs().
    experiment = Experiment(notebook["ws"], "az-notebook")
    again = Run(experiment, run.id)
    assert again.get_details()["status"] == "Completed" and again.experiment is experiment
    assert [r.id for r in experiment.get_runs()] == [run.id]


def test_hyperdrive_tunes_with_azures_meanings(notebook):
    hd_run = notebook["hd_run"]
    assert hd_run.get_status() == "Completed"
    children = hd_run.get_children_sorted_by_primary_metric()
    assert len(children) == 4
    hyperparameters = hd_run.get_hyperparameters()
    assert set(hyperparameters) == {c["run_id"] for c in children}
    for values in map(json.loads, hyperparameters.values()):
        # Azure's loguniform(-6, -1) is exp(uniform(-6, -1)); its keys get `--`.
        assert math.exp(-6) <= values["--learning-rate"] <= math.exp(-1)
        assert values["--batch-size"] in (16, 32)
    ranked = [c["best_primary_metric"] for c in children if c["status"] == "Completed"]
    assert ranked == sorted(ranked)
    best = notebook["best"]
    assert best.id == children[0]["run_id"]
    assert best.get_hyperparameters()["--learning-rate"] == \
        json.loads(hyperparameters[best.id])["--learning-rate"]
    assert len(list(Experiment(notebook["ws"], "az-hyperdrive").get_runs(
        include_children=True))) == 5


def test_register_deploy_run_update_delete(notebook, tmp_path):
    ws, model = notebook["ws"], notebook["model"]
    assert (model.name, model.version) == ("az-model", 1)
    assert model.run_id == notebook["best"].id
    assert [m.id for m in Model.list(ws, name="az-model")] == ["az-model:1"]
    inference_config = InferenceConfig(entry_script="score.py",
                                       source_directory=str(NOTEBOOK),
                                       environment=notebook["env"])
    aci_config = AciWebservice.deploy_configuration(cpu_cores=1, memory_gb=1)
    service = Model.deploy(ws, "az-service", [model], inference_config, aci_config)
    service.wait_for_deployment(show_output=True)
    assert service.state == "Healthy"
    rows = [[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]]
    first = service.run(json.dumps({"data": rows}))
    assert len(first) == 2 and first[0][0] > first[1][0]  # the model's answers
    # A raw HTTP POST to the scoring URI, as any client sends it.
    request = urllib.request.Request(service.scoring_uri,
                                     data=json.dumps({"data": rows}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert json.loads(reply.read()) == first
    assert "az-service" in ws.webservices

    # Version 2 of the model, registered from a download of version 1; the service updated.
    downloaded = Path(model.download(target_dir=str(tmp_path)))
    second = Model.register(ws, model_path=str(downloaded), model_name="az-model",
                            tags={"from": "download"})
    assert second.version == 2 and second.tags == {"from": "download"}
    service.update(models=[second])
    service.wait_for_deployment()
    assert Webservice(ws, "az-service")._endpoint.model == "az-model:2"
    assert service.run(json.dumps({"data": rows})) == first  # the same weights
    service.delete()
    assert "az-service" not in ws.webservices


def test_azure_inputs_that_cannot_work_are_refused(workspace):
    ws = Workspace(subscription_id="sub", resource_group="rg", workspace_name="w")
    with pytest.raises(TargetError, match="'gpu-cluster' is not in .*targets: local"):
        ComputeTarget(ws, "gpu-cluster")
    with pytest.raises(JobSpecError, match="must follow its flag"):
        ScriptRunConfig(source_directory=str(NOTEBOOK), script="train.py",
                        arguments=[Dataset.File.from_files(str(NOTEBOOK)).as_mount()]).to_job()
    with pytest.raises(JobSpecError, match="exactly one of run_config"):
        HyperDriveConfig(RandomParameterSampling({"a": randint(3)}), "loss", "MINIMIZE", 2)
    # max_duration_minutes limits the whole sweep, as Azure's does; a trial keeps its own.
    limited = HyperDriveConfig(
        run_config=ScriptRunConfig(str(NOTEBOOK), "train.py", max_run_duration_seconds=300),
        hyperparameter_sampling=RandomParameterSampling({"--a": choice(1, 2)}),
        primary_metric_name="loss", primary_metric_goal="MINIMIZE", max_total_runs=2,
        max_duration_minutes=30).to_sweep()
    assert limited.max_duration_seconds == 1800
    assert limited.estimator.max_run_duration_seconds == 300
    env = Environment.get(ws, "AzureML-TensorFlow-2.3-GPU")
    assert (env.framework_version, env.use_gpu) == ("2.12", True)  # the nearest supported
    assert randint(3).low == 0 and randint(3).high == 2  # Azure's [0, upper)
