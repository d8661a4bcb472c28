"""The objective contract: a new objective is one module and one gin file."""

import numpy as np
import pytest

from t5x_like import gin_loader, inputs
from t5x_like.config import ConfigError, ObjectiveConfig
from t5x_like.data import rows


def test_an_objective_module_and_a_gin_file_make_a_run(stdlib_data, tmp_path):
    gin_file = tmp_path / "reverse.gin"
    gin_file.write_text("import tests.data.reverse_objective\n"
                        "include 'runs/pretrain.gin'\n"
                        "ObjectiveConfig.name = 'reverse_lm'\n"
                        "TASK_FEATURE_LENGTHS = {'targets': 64}\n")
    cfg = gin_loader.load_run_config([str(gin_file)], {
        "DataConfig.data_dir": repr(str(stdlib_data.data_dir)), "BATCH_SIZE": "4"})
    tok, built = inputs.build_inputs(cfg)
    assert next(built.train_iter)["decoder_target_tokens"].shape == (4, 64)
    objective = rows.objective_for(cfg, tok)
    assert type(objective).__name__ == "ReverseLM"
    source = inputs.task_rows(cfg, objective, cfg.data.tasks_of()[0][0], "eval", tok)
    plan, batch = source.plan, source(np.arange(source.num_rows))
    checked = 0
    for r in range(source.num_rows):
        offset = 0
        for p in plan.row_pieces_P[plan.row_ptr_R1[r]:plan.row_ptr_R1[r + 1]]:
            d, start, n = plan.piece_doc_P[p], plan.piece_start_P[p], plan.piece_len_P[p]
            (ids,) = source.docs.dataset.pieces(np.array([d]), np.array([0]),
                                                 source.docs.lengths_D[[d]])
            seq = np.concatenate([[tok.bos_id], ids[::-1], [tok.eos_id]])
            np.testing.assert_array_equal(batch["decoder_target_tokens"][r, offset:offset + n],
                                          seq[start + 1:start + 1 + n])
            offset += n
            checked += 1
    assert checked == len(plan.piece_doc_P)


def test_an_unregistered_objective_is_refused_at_load():
    with pytest.raises(ConfigError, match="ObjectiveConfig.name = 'nope': choose one of"):
        ObjectiveConfig(name="nope")
