// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title RoundRegistry: constant-gas, append-only proofs of federated-learning rounds.
/// @notice Per task: an owner, an aggregator role, a participants root and a model spec hash.
/// Per round: ONE storage slot (the round root) plus one event (everything else), so a commit
/// costs the same for 10 or 100,000 clients.
///
/// The round root is the Merkle root of a two-subtree tree, hashPair(updatesRoot,
/// contributionsRoot): the left subtree holds the round's update leaves, the right one the
/// credits participants may claim (bytes32(0) when the round carries none). Trees follow
/// OpenZeppelin's MerkleProof conventions: sorted pairs hashed with keccak256, leaves hashed
/// twice (leaf = keccak256(bytes.concat(keccak256(abi.encode(fields...))))), so a proof of an
/// update is its proof in the updates tree followed by the contributions root, and a proof of
/// a credit is its proof in the contributions tree followed by the updates root.
contract RoundRegistry {
    struct Task {
        address owner;
        address aggregator;
        bytes32 participantsRoot;
        bytes32 modelSpecHash;
    }

    /// @notice Number of tasks created; task ids run from 1 to taskCount.
    uint256 public taskCount;

    mapping(uint256 task => Task) private _tasks;
    /// @dev The one slot per round. Zero means "not committed": rounds run 1, 2, 3, ... with no gap.
    mapping(uint256 task => mapping(uint256 round => bytes32 root)) private _roots;

    /// @notice Multiparty CKKS key epochs per task, in order (epoch e is index e - 1): the hash of
    /// the collective public key and the Merkle root of its key parties.
    mapping(uint256 task => KeyEpoch[]) private _keyEpochs;

    struct KeyEpoch {
        bytes32 keyHash;
        bytes32 partiesRoot;
    }

    /// @notice The block in which a round's payloads were sealed (0: not sealed), per task and round.
    mapping(uint256 task => mapping(uint256 round => uint256 blockNumber)) private _sealed;

    /// @notice Credits claimed so far, per task and account: the tally rewards build on.
    mapping(uint256 task => mapping(address account => uint256 total)) public credits;
    /// @notice Whether an account has claimed its credit of a round.
    mapping(uint256 task => mapping(uint256 round => mapping(address account => bool))) public claimed;

    event TaskCreated(
        uint256 indexed task,
        address indexed owner,
        address aggregator,
        bytes32 participantsRoot,
        bytes32 modelSpecHash
    );
    event AggregatorChanged(uint256 indexed task, address aggregator);
    event RoundCommitted(
        uint256 indexed task,
        uint256 indexed round,
        bytes32 updatesRoot,
        bytes32 contributionsRoot,
        bytes32 resultDigest,
        bytes32 metaHash,
        uint256 n
    );
    event KeyEpochSet(uint256 indexed task, uint256 indexed epoch, bytes32 keyHash, bytes32 partiesRoot);
    event RoundSealed(uint256 indexed task, uint256 indexed round, bytes32 updatesRoot, uint256 n);
    event CreditClaimed(uint256 indexed task, uint256 indexed round, address indexed account, uint256 credit);

    error ZeroAddress();
    error UnknownTask(uint256 task);
    error NotOwner(uint256 task, address caller);
    error NotAggregator(uint256 task, address caller);
    error EmptyRound(uint256 task, uint256 round);
    error RoundExists(uint256 task, uint256 round);
    error RoundOutOfOrder(uint256 task, uint256 round);
    error RoundNotCommitted(uint256 task, uint256 round);
    error EmptyKeyEpoch(uint256 task);
    error UnknownKeyEpoch(uint256 task, uint256 epoch);
    error AlreadySealed(uint256 task, uint256 round);
    error AlreadyClaimed(uint256 task, uint256 round, address account);
    error InvalidProof(uint256 task, uint256 round);

    /// @notice Registers a task; the caller becomes its owner. Returns the new task id.
    function createTask(address aggregator, bytes32 participantsRoot, bytes32 modelSpecHash)
        external
        returns (uint256 task)
    {
        if (aggregator == address(0)) revert ZeroAddress();
        task = ++taskCount;
        _tasks[task] = Task(msg.sender, aggregator, participantsRoot, modelSpecHash);
        emit TaskCreated(task, msg.sender, aggregator, participantsRoot, modelSpecHash);
    }

    /// @notice Hands the aggregator role to another account (owner only).
    function setAggregator(uint256 task, address aggregator) external {
        Task storage t = _tasks[task];
        if (t.owner == address(0)) revert UnknownTask(task);
        if (msg.sender != t.owner) revert NotOwner(task, msg.sender);
        if (aggregator == address(0)) revert ZeroAddress();
        t.aggregator = aggregator;
        emit AggregatorChanged(task, aggregator);
    }

    /// @notice Opens key epoch 1, 2, ... of `task` (owner only): `keyHash` names the collective
    /// CKKS public key clients encrypt under, `partiesRoot` the parties that hold its shares (a
    /// Merkle tree of (party, account, commitment, threshold) leaves). Returns the new epoch.
    function setKeyEpoch(uint256 task, bytes32 keyHash, bytes32 partiesRoot) external returns (uint256 epoch) {
        Task storage t = _tasks[task];
        if (t.owner == address(0)) revert UnknownTask(task);
        if (msg.sender != t.owner) revert NotOwner(task, msg.sender);
        if (keyHash == bytes32(0) || partiesRoot == bytes32(0)) revert EmptyKeyEpoch(task);
        KeyEpoch[] storage epochs = _keyEpochs[task];
        epochs.push(KeyEpoch(keyHash, partiesRoot));
        epoch = epochs.length;
        emit KeyEpochSet(task, epoch, keyHash, partiesRoot);
    }

    /// @notice The number of key epochs of `task` (0: none; the latest is in force).
    function keyEpochCount(uint256 task) external view returns (uint256) {
        return _keyEpochs[task].length;
    }

    /// @notice Key epoch `epoch` (from 1) of `task`; reverts with UnknownKeyEpoch if it has none.
    function keyEpoch(uint256 task, uint256 epoch) external view returns (bytes32 keyHash, bytes32 partiesRoot) {
        KeyEpoch[] storage epochs = _keyEpochs[task];
        if (epoch == 0 || epoch > epochs.length) revert UnknownKeyEpoch(task, epoch);
        KeyEpoch storage k = epochs[epoch - 1];
        return (k.keyHash, k.partiesRoot);
    }

    /// @notice Seals the payloads of round `round` of `task` before its result (aggregator only,
    /// once, while the round is the next to commit): a bucketed secure round draws its buckets from
    /// `updatesRoot` and the hash of the block after this one, which the aggregator cannot choose.
    /// The round's commit names the same root; the audit checks that it does.
    function sealRound(uint256 task, uint256 round, bytes32 updatesRoot, uint256 n) external {
        address aggregator = _tasks[task].aggregator;
        if (aggregator == address(0)) revert UnknownTask(task);
        if (msg.sender != aggregator) revert NotAggregator(task, msg.sender);
        if (n == 0 || updatesRoot == bytes32(0)) revert EmptyRound(task, round);
        mapping(uint256 => bytes32) storage roots = _roots[task];
        if (roots[round] != bytes32(0)) revert RoundExists(task, round);
        if (round == 0 || (round > 1 && roots[round - 1] == bytes32(0))) {
            revert RoundOutOfOrder(task, round);
        }
        if (_sealed[task][round] != 0) revert AlreadySealed(task, round);
        _sealed[task][round] = block.number;
        emit RoundSealed(task, round, updatesRoot, n);
    }

    /// @notice The block that sealed round `round` of `task` (0: not sealed).
    function sealedAt(uint256 task, uint256 round) external view returns (uint256) {
        return _sealed[task][round];
    }

    /// @notice Commits round `round` of `task` (aggregator only; round 1 first, then r after r-1).
    /// @dev Gas: one cold SLOAD of the aggregator, one of round r-1, one fresh SSTORE and one
    /// event, whatever n is.
    function commitRound(
        uint256 task,
        uint256 round,
        bytes32 updatesRoot,
        bytes32 contributionsRoot,
        bytes32 resultDigest,
        bytes32 metaHash,
        uint256 n
    ) external {
        address aggregator = _tasks[task].aggregator;
        if (aggregator == address(0)) revert UnknownTask(task);
        if (msg.sender != aggregator) revert NotAggregator(task, msg.sender);
        if (n == 0 || updatesRoot == bytes32(0)) revert EmptyRound(task, round);
        mapping(uint256 => bytes32) storage roots = _roots[task];
        if (roots[round] != bytes32(0)) revert RoundExists(task, round);
        if (round == 0 || (round > 1 && roots[round - 1] == bytes32(0))) {
            revert RoundOutOfOrder(task, round);
        }
        roots[round] = _hashPair(updatesRoot, contributionsRoot);
        emit RoundCommitted(task, round, updatesRoot, contributionsRoot, resultDigest, metaHash, n);
    }

    /// @notice True iff `leaf` (already double-hashed) is in the round's tree by `proof`.
    /// Reverts with RoundNotCommitted for a round that has no commit.
    function verifyInclusion(uint256 task, uint256 round, bytes32 leaf, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        return processProof(leaf, proof) == _committedRoot(task, round);
    }

    /// @notice Adds `credit` to `account`'s tally, once per round, given its proof in the round's
    /// tree (contributions proof, then the updates root). Anyone may submit; the credit always
    /// goes to `account`. The leaf is keccak256(bytes.concat(keccak256(abi.encode(round, account,
    /// credit)))).
    function claim(uint256 task, uint256 round, address account, uint256 credit, bytes32[] calldata proof)
        external
    {
        bytes32 root = _committedRoot(task, round);
        if (claimed[task][round][account]) revert AlreadyClaimed(task, round, account);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(round, account, credit))));
        if (processProof(leaf, proof) != root) revert InvalidProof(task, round);
        claimed[task][round][account] = true;
        credits[task][account] += credit;
        emit CreditClaimed(task, round, account, credit);
    }

    /// @notice True iff `account` is in the task's participants tree by `proof`; the leaf is
    /// keccak256(bytes.concat(keccak256(abi.encode(account)))).
    function isParticipant(uint256 task, address account, bytes32[] calldata proof) external view returns (bool) {
        Task storage t = _tasks[task];
        if (t.owner == address(0)) revert UnknownTask(task);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account))));
        return processProof(leaf, proof) == t.participantsRoot;
    }

    /// @notice The task's owner, aggregator, participants root and model spec hash.
    function getTask(uint256 task) external view returns (Task memory) {
        Task memory t = _tasks[task];
        if (t.owner == address(0)) revert UnknownTask(task);
        return t;
    }

    /// @notice The stored root of a round: hashPair(updatesRoot, contributionsRoot), or zero.
    function roundRoot(uint256 task, uint256 round) external view returns (bytes32) {
        return _roots[task][round];
    }

    /// @notice The last committed round of a task (0 if none), by galloping then bisecting over
    /// the gap-free rounds: O(log r) reads, no counter to keep up to date in commitRound.
    function latestRound(uint256 task) external view returns (uint256) {
        mapping(uint256 => bytes32) storage roots = _roots[task];
        if (roots[1] == bytes32(0)) return 0;
        uint256 lo = 1;
        uint256 hi = 2;
        while (roots[hi] != bytes32(0)) {
            lo = hi;
            hi <<= 1;
        }
        // roots[lo] is set and roots[hi] is not; keep that invariant while narrowing.
        while (hi - lo > 1) {
            uint256 mid = (lo + hi) >> 1;
            if (roots[mid] != bytes32(0)) lo = mid;
            else hi = mid;
        }
        return lo;
    }

    /// @notice The root that `proof` leads to from `leaf`, hashing sorted pairs bottom-up.
    function processProof(bytes32 leaf, bytes32[] calldata proof) public pure returns (bytes32 node) {
        node = leaf;
        for (uint256 i = 0; i < proof.length; ++i) {
            node = _hashPair(node, proof[i]);
        }
    }

    function _committedRoot(uint256 task, uint256 round) private view returns (bytes32 root) {
        root = _roots[task][round];
        if (root == bytes32(0)) revert RoundNotCommitted(task, round);
    }

    /// @dev keccak256 of the two nodes, smaller first, so a proof needs no left/right flags.
    /// Hashed in the scratch space (0x00-0x3f) to avoid growing memory on every level.
    function _hashPair(bytes32 a, bytes32 b) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            switch lt(a, b)
            case 1 {
                mstore(0x00, a)
                mstore(0x20, b)
            }
            default {
                mstore(0x00, b)
                mstore(0x20, a)
            }
            h := keccak256(0x00, 0x40)
        }
    }
}
