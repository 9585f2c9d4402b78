// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title DigestPerClient: the baseline the round registry is measured against.
/// @notice What existing BCFL contracts do: one stored digest (hash or IPFS id) per client and
/// round, so a round's gas grows linearly with its clients. Used by benchmarks/bench_chain.py only.
contract DigestPerClient {
    mapping(uint256 task => mapping(uint256 round => mapping(address client => bytes32))) public digests;

    error LengthMismatch(uint256 clients, uint256 digests);

    /// @notice One client stores its own digest (one transaction per client).
    function store(uint256 task, uint256 round, bytes32 digest) external {
        digests[task][round][msg.sender] = digest;
    }

    /// @notice The aggregator stores every client's digest in one transaction (the cheapest form).
    function storeBatch(uint256 task, uint256 round, address[] calldata clients, bytes32[] calldata list)
        external
    {
        if (clients.length != list.length) revert LengthMismatch(clients.length, list.length);
        mapping(address => bytes32) storage slots = digests[task][round];
        for (uint256 i = 0; i < clients.length; ++i) {
            slots[clients[i]] = list[i];
        }
    }
}
