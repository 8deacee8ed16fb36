from effplug.launch import _ephemeral_range, free_port, rank_env


def test_free_port_is_below_the_ephemeral_range_and_bindable():
    import socket

    low, _ = _ephemeral_range()
    port = free_port()
    assert 1024 <= port < low
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_rank_env_is_what_torchrun_sets():
    env = rank_env(1, 2, 23456)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("1", "1", "2", "23456")
