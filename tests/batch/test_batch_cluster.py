"""`noduleflow batch` on a local two-node Ray cluster (`ray.cluster_utils.Cluster`): one worker on
each node, and detect's candidates series for series. Slow: it starts a Ray head and a second node."""
from __future__ import annotations

import pytest

from noduleflow.batch import ClusterSettings, batch, find_jobs
from noduleflow.engine.config import DetectorConfig
from noduleflow.engine.detector import Detector

from .test_batch_ray import assert_one_result_each

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.mark.slow
def test_two_node_cluster_gives_detects_candidates(cohort, tmp_path):
    config = DetectorConfig(stages="1")
    with Detector(config=config) as det:
        reference = {d.series_uid: d.to_csv() for d in (det.detect(j.path, series_uid=j.series_uid)
                                                        for j in find_jobs([cohort]))}
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": 96 * 2**20})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=96 * 2**20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        out = tmp_path / "out"
        r = batch([cohort], out, config=config, png=False, progress=False,
                  cluster=ClusterSettings(address=cluster.address, workers=2, cpus_per_worker=1))
        assert (r.n_done, r.n_failed) == (6, 0)
        assert len({w["node"] for w in r.workers}) == 2, r.workers   # one replica on each node
        assert_one_result_each(out, reference)
    finally:
        ray.shutdown()
        cluster.shutdown()
