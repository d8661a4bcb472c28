"""Collective bytes read from HLO text: sizes, loop trip counts, async forms, fused copies."""

import pytest

from t5x_like import hlo_collectives as hc

# A hand-written module in the shape of TPU output: a 32-trip while loop whose body gathers a
# weight (one collective copied into two fused computations, as async collective fusion does)
# and reduce-scatters its gradient; async all-reduce and collective-permute in the entry.
MODULE = """HloModule m, entry_computation_layout={(f32[8,128]{1,0})->f32[8,128]{1,0}}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%gather_start (p0: f32[8,128]) -> f32[64,128] {
  %p0 = f32[8,128]{1,0} parameter(0)
  ROOT %all-gather.1 = f32[64,128]{1,0:T(8,128)} all-gather(%p0), channel_id=7, replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, dimensions={0}
}

%gather_overlap (p0: f32[8,128]) -> (f32[64,128], bf16[4,4]) {
  %p0 = f32[8,128]{1,0} parameter(0)
  %all-gather.2 = f32[64,128]{1,0:T(8,128)S(1)} all-gather(%p0), channel_id=7, replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, dimensions={0}
  %c = bf16[4,4]{1,0:T(4,128)(2,1)} constant({...})
  ROOT %t = (f32[64,128]{1,0}, bf16[4,4]{1,0}) tuple(%all-gather.2, %c)
}

%body (p: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %p = (s32[], f32[8,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8,128]{1,0} get-tuple-element(%p), index=1
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %g = f32[64,128]{1,0} fusion(%x), kind=kCustom, calls=%gather_start
  %o = (f32[64,128]{1,0}, bf16[4,4]{1,0}) fusion(%x), kind=kCustom, calls=%gather_overlap
  %rs = f32[8,128]{1,0} reduce-scatter(%g), channel_id=8, replica_groups=[1,8]<=[8], dimensions={0}, to_apply=%add
  ROOT %r = (s32[], f32[8,128]{1,0}) tuple(%next, %rs)
}

%cond (p: (s32[], f32[8,128])) -> pred[] {
  %p = (s32[], f32[8,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(32)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[8,128]) -> f32[8,128] {
  %a = f32[8,128]{1,0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,128]{1,0}) tuple(%zero, %a)
  %w = (s32[], f32[8,128]{1,0}) while(%init), condition=%cond, body=%body
  %y = f32[8,128]{1,0} get-tuple-element(%w), index=1
  %ars = bf16[16]{0} all-reduce-start(%y), channel_id=3, replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add
  %ard = bf16[16]{0} all-reduce-done(%ars)
  %cps = (f32[4]{0}, f32[4]{0}, u32[], u32[]) collective-permute-start(%y), channel_id=4, source_target_pairs={{0,1},{1,0}}
  %cpd = f32[4]{0} collective-permute-done(%cps)
  ROOT %out = f32[8,128]{1,0} copy(%y)
}
"""


def test_array_bytes_reads_dtypes_and_ignores_tpu_layouts():
    assert hc.array_bytes("bf16[1,32,4,8]{3,2,0,1:T(4,128)(2,1)S(1)}") == 2 * 32 * 4 * 8
    assert hc.array_bytes("(f32[2]{0}, /*index=1*/pred[8]{0}, u32[]{:S(2)})") == 8 + 8 + 4
    assert hc.array_bytes("s32[]") == 4


def test_loops_multiply_and_fused_copies_count_once():
    counts = hc.count_collectives(MODULE, num_devices=8)
    assert counts.unknown_loops == []
    assert counts.ops["all-gather"] == 32  # two copies of channel 7, 32 iterations
    assert counts.result_bytes["all-gather"] == 32 * 64 * 128 * 4
    assert counts.traffic_bytes["all-gather"] == 32 * 64 * 128 * 4 * 7 / 8
    # A reduce-scatter's traffic is its input's (n-1)/n: n - 1 results.
    assert counts.traffic_bytes["reduce-scatter"] == 32 * 8 * 128 * 4 * 7


def test_async_starts_count_their_results_and_groups_come_from_replica_groups():
    counts = hc.count_collectives(MODULE, num_devices=8)
    assert counts.ops["all-reduce"] == 1 and counts.result_bytes["all-reduce"] == 32
    assert counts.traffic_bytes["all-reduce"] == pytest.approx(2 * 32 * 3 / 4)  # groups of 4
    assert counts.result_bytes["collective-permute"] == 16  # the result, not the operand too


def test_the_costliest_collectives_are_listed_with_their_loop_runs():
    counts = hc.count_collectives(MODULE, num_devices=8, top=2)
    assert counts.loop_trips == {"w": 32}
    # Equal traffic: the gather's 7/8 of 64 rows, the scatter's 7 x 8 rows.
    assert {(c.kind, c.shape, c.runs, c.group) for c in counts.largest} == {
        ("reduce-scatter", "f32[8,128]", 32, 8), ("all-gather", "f32[64,128]", 32, 8)}


def test_a_loop_without_a_readable_bound_counts_once_and_is_named():
    counts = hc.count_collectives(MODULE.replace("direction=LT", "direction=NE"), 8)
    assert counts.unknown_loops == ["w"]
    assert counts.ops["all-gather"] == 1


def test_a_known_trip_count_wins_over_the_condition():
    text = MODULE.replace("body=%body", 'body=%body, backend_config={"known_trip_count":{"n":"5"}}')
    assert hc.count_collectives(text, 8).ops["reduce-scatter"] == 5


def test_a_cross_slice_all_reduce_is_a_megascale_send():
    send = ('  %send.1 = (f32[4,8,128]{2,1,0:T(8,128)}, u32[], token[]) send(%y, %tok), '
            'channel_id=9, is_host_transfer=true, frontend_attributes={_xla_host_transfer_'
            'handler_name="xla_megascale_runtime",_xla_megascale_reduce_operation="SUM"}\n'
            '  %recv.1 = (f32[4,8,128]{2,1,0}, u32[], token[]) recv(%tok), channel_id=8, '
            'is_host_transfer=true, frontend_attributes={_xla_megascale_reduce_operation="SUM"}\n')
    text = MODULE.replace("  ROOT %out =", send + "  ROOT %out =")
    counts = hc.count_collectives(text, num_devices=8, num_slices=2)
    assert counts.ops["dcn-all-reduce"] == 1  # the send; its recv is the same transfer
    assert counts.result_bytes["dcn-all-reduce"] == 4 * 8 * 128 * 4
    assert counts.traffic_bytes["dcn-all-reduce"] == 4 * 8 * 128 * 4  # 2(S-1)/S, S = 2
